"""One module per analysis of the paper (Guan et al., ICML 2019); run them with ``python -m examples.run``."""
