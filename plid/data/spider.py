"""Import the SPIDER download into a folder in the spider2d layout.

    python -m plid.data.spider root=/data/SPIDER out=/data/spider2d_full
    python -m plid.data.spider root=... out=... series=[t2_SPACE] slices=15 subset=all
    python -m plid.data.spider root=... out=... debug=smoke          # one patient

The conversion itself is :func:`plid.datamodules.spider.import_spider`; options are in conf/spider_import.yaml.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from plid.errors import find_user_error

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="spider_import")
def main(cfg: DictConfig) -> None:
    from plid.datamodules.spider import import_spider

    missing = [key for key in ("root", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        sys.exit(f"error: give {' and '.join(f'{k}=<folder>' for k in missing)} "
                 f"(root: the SPIDER download with images/, masks/, overview.csv; out: a new folder)")
    try:
        out = import_spider(root=cfg.root, out=cfg.out, series=list(cfg.series), slices=cfg.slices,
                            subset=cfg.subset, max_patients=cfg.max_patients, overwrite=cfg.overwrite,
                            workers=cfg.workers)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(f"error: {user_error}")
    print(out)


if __name__ == "__main__":
    main()
