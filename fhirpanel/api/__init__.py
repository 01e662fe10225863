"""The Flask API and dashboard (`create_app`), served by gunicorn in `fhirpanel serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(*args: Any, **kwargs: Any) -> Flask:
    """See `fhirpanel.api.app.create_app` (imported on first use: the CLI stays light)."""
    from fhirpanel.api.app import create_app as factory

    return factory(*args, **kwargs)


__all__ = ["create_app"]
