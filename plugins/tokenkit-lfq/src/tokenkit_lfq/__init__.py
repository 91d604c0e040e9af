"""tokenkit-lfq: lookup-free quantization as a tokenkit plugin (entry point name ``lfq``)."""

from tokenkit_lfq.lfq import LFQConfig, LFQuantizer

__all__ = ["LFQConfig", "LFQuantizer"]
