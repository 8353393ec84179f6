"""Unpickle a crafted CREPS snapshot as plain pickle would, recording instead of running ``system``.

Run as ``python creps_payload_probe.py FILE RECORD``: every module the official code would
import is a harmless stand-in, except that a call of ``os.system`` / ``posix.system`` (from
a global, from the exec'd module source, or from a nested storage stream) appends its
command to RECORD. A non-empty RECORD proves the file's payload is live under plain pickle.
"""

import builtins
import io
import pickle
import sys
from unittest import mock

path, record = sys.argv[1], sys.argv[2]


def system(command):
    with open(record, "a") as handle:
        handle.write(f"{command}\n")
    return 0


class Stub(dict):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


fake_os = mock.MagicMock(system=system)


def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
    return fake_os if name in ("os", "posix") else mock.MagicMock()


def reconstruct(meta):  # the official persistence loader execs the embedded source
    namespace = {"__builtins__": {**vars(builtins), "__import__": fake_import}, "__name__": "probe"}
    try:
        exec(meta["module_src"], namespace)  # noqa: S102 - every import is a stand-in
    except Exception:  # noqa: BLE001 - the stand-ins are not the real modules
        pass
    return Stub()


def load_from_bytes(data):  # the official loader calls torch.load(weights_only=False) on this
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            Probe(stream).load()
        except Exception:  # noqa: BLE001 - the raw storage bytes follow the pickles
            break
    return Stub()


class Probe(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "system":
            return system
        if name == "_reconstruct_persistent_obj":
            return reconstruct
        if name == "_load_from_bytes":
            return load_from_bytes
        return Stub

    def persistent_load(self, pid):
        return Stub()


with open(path, "rb") as handle:
    Probe(handle).load()
