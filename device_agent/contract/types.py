"""Type names shared by every room: tensors and JSON documents.

``JsonDict`` marks a value that is (or becomes) a JSON object on the wire or on disk: its members
are checked where they are read (the manifest reader, the protocol decoder, the job parser).
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

__all__ = ["Array", "Feeds", "JsonDict"]

#: a tensor of any dtype (the signature, not the static type, says which)
Array = npt.NDArray[Any]
#: tensors by input or output name
Feeds = dict[str, Array]
#: a JSON object
JsonDict = dict[str, Any]
