from plid.utils.io import atomic_write, write_json

__all__ = ["atomic_write", "write_json"]
