"""``pixelseg serve``: a saved model behind an HTTP API (FastAPI on uvicorn) and a single web page.

``segment.py`` turns uploaded bytes into a prediction (decoding with the upload limits, the model loaded
once); ``app.py`` is the HTTP layer (routes, limits, the bounded worker pool); ``static/`` is the page,
served at ``/`` with no external resources. Needs the ``serve`` extra: ``pip install 'pixelseg[serve]'``.
"""

from __future__ import annotations

from .segment import Limits, ServedModel, UploadRefused

__all__ = ["Limits", "ServedModel", "UploadRefused"]
