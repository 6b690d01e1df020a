"""A local Cloud Storage for tests: gcp-storage-emulator (in memory), with the object generation headers that
tensorstore's gcs driver reads on downloads (x-goog-generation, which the emulator does not send).

    python tests/gcs_emulator.py PORT BUCKET
"""

import sys
import time

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration") or "1")
    except Exception:  # noqa: BLE001 - the original handler answers 404 for a missing object
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download_with_generation
server.HANDLERS = tuple((pattern, {method: download_with_generation if handler is _download else handler
                                   for method, handler in methods.items()}) for pattern, methods in server.HANDLERS)

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    emulator.start()
    while True:
        time.sleep(1)
