"""The context a run is scored and sampled at: the one it was trained on. It lives with the
run's model source (keelctl.sources.keel), which every analysis opens runs through."""

from keelctl.sources.keel import trained_context

__all__ = ["trained_context"]
