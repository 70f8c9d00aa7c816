"""Moved to :mod:`refconv.cli.downstream` (the CLI room); kept so existing imports work."""

from ..cli.downstream import (  # noqa: F401
    add_detect_parser,
    add_segment_parser,
    config_from_args,
    main_detect,
    main_segment,
    register,
)
