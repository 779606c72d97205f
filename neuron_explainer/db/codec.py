"""Value conversions between the stage records and the database columns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|password)=)[^&\s]*")


def redact(text: str) -> str:
    """Remove credentials from a backend spec or URL (`user:pass@`, `?api_key=`) before it is stored or shown."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


_SCALARS = (str, int, bool, type(None))


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)) and not isinstance(value, Enum):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


def dump_json(value: Any) -> str:
    """Compact JSON that any database accepts: NaN/inf become null, enums their value, tuples lists."""
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def load_json(text: str | None, default: Any = None) -> Any:
    """Parse a JSON column (None or empty gives `default`)."""
    if not text:
        return default
    if text == "{}":  # by far the commonest value; skips the parser on bulk reads
        return {}
    return json.loads(text)


def float_or_none(value: float | None) -> float | None:
    """A metric as stored: NaN and inf become NULL."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def none_to_nan(value: float | None) -> float:
    """A metric as returned: NULL becomes NaN."""
    return float("nan") if value is None else float(value)


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_iso(value: str | float | dt.datetime | None = None) -> str:
    """Fixed-width ISO-8601 UTC (`2024-05-01T12:00:00.000000Z`), sortable as text, from an ISO string, epoch
    seconds or a datetime (naive input counts as UTC); None is now."""
    if value is None:
        moment = dt.datetime.now(dt.timezone.utc)
    elif isinstance(value, (int, float)):
        moment = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    elif isinstance(value, dt.datetime):
        moment = value
    else:
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime(TIMESTAMP_FORMAT)


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} characters truncated]"
    return text[: max(limit - len(marker), 0)] + marker
