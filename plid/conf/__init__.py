"""plid's Hydra configs, a package so that Hydra finds them by its package search path (pkg://plid.conf) from
an installed wheel as from the checkout."""
