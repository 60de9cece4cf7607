"""Examples reproducing the analyses of Guan et al. (ICML 2019) with lightning_infoflow."""
