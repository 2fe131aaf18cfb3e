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

from plid.utils.hydra import run_task

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="spider_import")
def main(cfg: DictConfig) -> None:
    from plid.datamodules.spider import import_spider

    missing = [key for key in ("root", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        sys.exit(f"error: give {' and '.join(f'{k}=<folder>' for k in missing)} "
                 f"(root: the SPIDER download with images/, masks/, overview.csv; out: a new folder)")
    out = run_task(lambda c: import_spider(root=c.root, out=c.out, series=list(c.series), slices=c.slices,
                                           subset=c.subset, max_patients=c.max_patients, overwrite=c.overwrite,
                                           workers=c.workers), cfg)
    print(out)


if __name__ == "__main__":
    main()
