"""Serves local git repositories as a read-only Hugging Face Hub with olah, for `test_hub_server.py`.

Run as `python olah_local_mirror.py --config olah.toml`, where the config sets `[basic] mirrors-path` (folders laid
out `models/<org>/<name>/.git` and `datasets/<org>/<name>/.git`) and `[accessibility] offline = true`. olah (0.5.x) serves files, file metadata and
`/api/models/<id>/revision/<rev>` from such mirrors, but one answer differs from the Hub's in a way the Hub clients
cannot live with; this wrapper corrects it in front of olah's app:

A file or folder missing from a mirrored repository gets `401 RepoNotFound` instead of `404 EntryNotFound`, on
`/[datasets/]<org>/<name>/resolve/...` and on `/api/{models,datasets}/<org>/<name>/tree/...`. `transformers` probes optional files
(`adapter_config.json`, `preprocessor_config.json`, the `additional_chat_templates/` folder, ...) and only tolerates
the 404, so every `from_pretrained` would fail at its first probe.

Everything else is olah's own answer: file contents, ETags and commit hashes, revision info, folder listings. olah
also answers `RepoNotFound` to `GET /api/models/<org>/<name>` (model info at the default branch; it resolves the
latest commit of upstream or cached repositories only), which the clients tolerate, so it is left as it is.
"""

from __future__ import annotations

import os
import re

import uvicorn
from olah import server

# A file or folder of a model (`/org/name/...`, `/api/models/org/name/tree/...`) or a dataset (`/datasets/org/name/...`,
# `/api/datasets/org/name/tree/...`).
_ENTRY = re.compile(r"^(?:/api/(?P<api>models|datasets)|/(?P<kind>datasets))?/(?P<org>[^/]+)/(?P<name>[^/]+)"
                    r"/(?:resolve|tree)/[^/]+/.+$")


class LocalMirrorFixes:
    """ASGI middleware around olah's app; see the module docstring."""

    def __init__(self, app, mirrors_path: list[str]):
        self.app = app
        self.mirrors_path = mirrors_path

    def _is_mirrored(self, kind: str, org: str, name: str) -> bool:
        return any(os.path.isdir(os.path.join(root, kind, org, name, ".git")) for root in self.mirrors_path)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        entry = _ENTRY.match(scope["path"])
        if entry and self._is_mirrored(entry["api"] or entry["kind"] or "models", entry["org"], entry["name"]):
            send = _entry_not_found(send)
        return await self.app(scope, receive, send)


def _entry_not_found(send):
    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] == 401:
            headers = dict(message.get("headers", []))
            if headers.get(b"x-error-code") == b"RepoNotFound":
                headers[b"x-error-code"] = b"EntryNotFound"
                headers[b"x-error-message"] = b"Entry not found"
                message = {**message, "status": 404, "headers": list(headers.items())}
        await send(message)

    return wrapped


def main() -> None:
    args = server.init()  # olah's own command line: --config, --host, --port, ...
    mirrors_path = server.app.state.app_settings.config.mirrors_path
    uvicorn.run(LocalMirrorFixes(server.app, mirrors_path), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
