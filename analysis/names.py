"""The report's sections, output formats and epoch-selection rules, kept apart from the
modules that compute them so that the command line can offer them without importing the
analysis stack (pandas, scipy, matplotlib)."""

SECTIONS = ("tables", "published", "transfer", "cost", "weights", "conflict", "curves", "spectra",
            "toy")
FORMATS = ("md", "html", "tex", "csv")
RULES = ("last", "best_val", "last_k")
