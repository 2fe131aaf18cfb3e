"""Command-line importers of public datasets into the spider2d layout (``python -m plid.data.spider``)."""
