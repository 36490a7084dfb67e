"""Row labels of configurations: runs of one method with different config hashes are never
averaged together, and a reader needs to see what differs, not a hash.

A method run with one configuration is labelled by its name (``gradnorm``). With several, each
configuration is labelled by the settings that differ among that method's configurations
(``gradnorm α=1.5``, ``ew train.lr=0.001``), read from the runs' ``config.json``: the
method's own hyperparameters by their name, every other setting by its dotted path. When no
recorded setting differs (or two labels would coincide), the hash is appended
(``gradnorm [1a2b3c4d]``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.collect import read_json

# Not settings a reader chooses: identity and bookkeeping (the data fingerprint is absent from
# folders written before it was recorded, which must not read as a difference).
NOT_CONFIG = {"seed", "device", "data_root", "config_hash", "benchmark", "method",
              "data_fingerprint"}
SYMBOLS = {"alpha": "α", "beta": "β", "gamma": "γ", "lambda": "λ", "rho": "ρ", "tau": "τ"}


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _settings(config: dict, method: str) -> dict[str, object]:
    """The run's settings as ``name -> value``: the method's own hyperparameters by name, the
    rest by dotted path (other methods' sections are not this run's settings)."""
    flat = {}
    for key, value in config.items():
        if key in NOT_CONFIG:
            continue
        if key == "methods":
            own = (value or {}).get(method) if isinstance(value, dict) else None
            for name, v in _flatten(own or {}).items():
                flat[SYMBOLS.get(name, name)] = v
            continue
        flat.update(_flatten(value, f"{key}."))
    return flat


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def config_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``{run_dir: label}`` for the runs of ``runs`` (columns benchmark, method, config_hash,
    run_dir); configurations are told apart within each benchmark and method."""
    out: dict[str, str] = {}
    for (_bench, method), part in runs.groupby(["benchmark", "method"], sort=False):
        hashes = list(dict.fromkeys(part.config_hash))
        if len(hashes) == 1:
            out.update(dict.fromkeys(part.run_dir, str(method)))
            continue
        settings = {}
        for h in hashes:
            first = part[part.config_hash == h].run_dir.iloc[0]
            settings[h] = _settings(read_json(Path(first) / "config.json") or {}, str(method))
        keys = sorted(set().union(*settings.values()))
        differing = [k for k in keys
                     if len({_text(s.get(k, "–")) for s in settings.values()}) > 1]
        labels = {h: " ".join([str(method)] + [f"{k}={_text(settings[h].get(k, '–'))}"
                                               for k in differing]) for h in hashes}
        counts = pd.Series(list(labels.values())).value_counts()
        for h in hashes:
            if not differing or counts[labels[h]] > 1:
                labels[h] = f"{labels[h]} [{h}]"
        for h in hashes:
            out.update(dict.fromkeys(part[part.config_hash == h].run_dir, labels[h]))
    return out
