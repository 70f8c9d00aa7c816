from ..downstream.cli import register  # noqa: F401  (adds `refconv detect` and `refconv segment`)
