"""``python -m plid.ensemble``: see plid/ensemble/run.py."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from plid.ensemble.run import ensemble
from plid.errors import find_user_error
from plid.utils import hydra as _resolvers  # noqa: F401  (registers the config resolvers)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("extras", {}).get("print_config"):
        log.info("Config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        summary = ensemble(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(f"error: {user_error}")
    return summary["val"]["WAE"][summary["metric"]]


if __name__ == "__main__":
    main()
