import json
from pathlib import Path

import numpy as np

from workers.records import json_safe


def test_json_safe_turns_numpy_nan_paths_and_tuples_into_plain_json():
    value = {"p99": np.float32(1.5), "n": np.int64(3), "ok": np.bool_(True), "nan": float("nan"),
             "inf": np.float64("inf"), "cores": (0, 1), "path": Path("/tmp/x.parquet"), 7: None}
    out = json_safe(value)
    assert out == {"p99": 1.5, "n": 3, "ok": True, "nan": None, "inf": None, "cores": [0, 1],
                   "path": "/tmp/x.parquet", "7": None}
    assert type(out["n"]) is int and type(out["ok"]) is bool
    json.dumps(out, allow_nan=False)
