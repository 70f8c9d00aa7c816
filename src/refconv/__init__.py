"""refconv: Re-parameterized Refocusing Convolution for pretrained ConvNets."""

__version__ = "0.1.0"
