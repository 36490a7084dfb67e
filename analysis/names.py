"""The report's sections, output formats, epoch-selection rules and corrections, kept apart from the
modules that compute them so that the command line can offer them without importing the
analysis stack (pandas, scipy, matplotlib)."""

SECTIONS = ("tables", "published", "transfer", "cost", "weights", "conflict", "curves", "spectra",
            "toy", "saliency")
FORMATS = ("md", "html", "tex", "csv")
RULES = ("last", "best_val", "last_k", "best_test_dp", "best_val_dp")
TEST_SELECTED = ("best_test_dp",)
"""Rules that pick the epoch by test metrics: their numbers are optimistic and are labelled."""
CORRECTIONS = ("holm", "bh", "none")
"""Multiple-comparison corrections (analysis.measures.adjust_p_values)."""
