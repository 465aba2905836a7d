"""The catalog's names as the issue and METHODS.md list them: the tests' independent expectation."""

CATALOG_NAMES = [
    "alpha",
    "gan",
    "jeffreys",
    "js",
    "kl",
    "neyman",
    "pearson",
    "reverse_kl",
    "skew_js",
    "skew_kl",
    "skew_reverse_kl",
    "squared_hellinger",
    "total_variation",
    "triangular",
]
