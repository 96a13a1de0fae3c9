"""Built cuDNN execution plans on disk, so a later process skips cuDNN's heuristics and plan building.

    RESNET_FAST_CUDNN_CACHE=dir   where (default ~/.cache/resnet_fast/cudnn_plans); "off" disables it.
One JSON file per plan, named by a hash of the graph key (UnitGraph.key()), the device name and the cuDNN
version, holding the serialized plan (graph.serialize()) and the uid of every bound tensor, so that a
deserialized plan is executed by uid. A missing, unreadable or stale file is rebuilt, never trusted: the
key is stored and compared. Writes are atomic (temporary file + rename); a read-only disk keeps plans in
memory only. The GPU path (serialize / deserialize through the frontend) has not run on a GPU yet.
"""

import base64
import hashlib
import json
import os
import tempfile
from typing import Dict, Optional, Tuple


def cache_dir() -> Optional[str]:
    path = os.environ.get("RESNET_FAST_CUDNN_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "resnet_fast", "cudnn_plans"))
    return None if path.lower() == "off" else path


def _entry(key: str, device_name: str, cudnn_version: int) -> Tuple[str, str]:
    full = f"{key}|{device_name}|cudnn {cudnn_version}"
    return full, hashlib.sha1(full.encode()).hexdigest()[:20] + ".json"


def load(key: str, device_name: str, cudnn_version: int) -> Optional[Tuple[bytes, Dict[str, int]]]:
    """(serialized plan, {binding name: uid}) stored for this graph, device and cuDNN, or None."""
    root = cache_dir()
    if root is None:
        return None
    full, name = _entry(key, device_name, cudnn_version)
    try:
        with open(os.path.join(root, name)) as f:
            entry = json.load(f)
        if entry["key"] != full:
            return None
        return base64.b64decode(entry["plan"]), {k: int(v) for k, v in entry["uids"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(key: str, device_name: str, cudnn_version: int, plan: bytes, uids: Dict[str, int]) -> None:
    root = cache_dir()
    if root is None:
        return
    full, name = _entry(key, device_name, cudnn_version)
    try:
        os.makedirs(root, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": full, "uids": uids, "plan": base64.b64encode(bytes(plan)).decode()}, f)
        os.replace(tmp, os.path.join(root, name))
    except OSError:
        pass  # read-only home: the plan stays in memory for this process
