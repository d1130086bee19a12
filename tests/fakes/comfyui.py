"""A fake ComfyUI that speaks ComfyUI v0.8's HTTP and WebSocket protocol.

Followed: ComfyUI v0.8 ``server.py``, ``execution.py`` and ``main.py`` as
summarised in ``shared/reference/comfyui.md`` Part 1 and the trace taken on a
real ComfyUI 0.8.0. Faithful where a client can tell:

* ``POST /prompt`` validates client-chosen prompt ids (canonical uuid), unknown
  node classes (400 ``invalid_prompt`` with empty ``node_errors``), required
  inputs, ranges and combo values (400 ``prompt_outputs_failed_validation``
  with per-node ``node_errors``; 200 with ``node_errors`` when only some
  outputs fail, and only the good ones run), and a graph without outputs;
* one prompt executes at a time, lowest ``number`` first;
* WebSocket order per prompt: ``execution_start``, ``execution_cached``, then per
  node ``progress_state`` running, ``executing {node}``, ``progress`` (samplers,
  with binary preview frames), ``executed`` (output nodes), ``progress_state``
  finished; then ``execution_success`` | ``execution_error`` |
  ``execution_interrupted`` (broadcast); *then* history is written and
  ``executing {node: null}`` is sent. ``status`` is broadcast on queue changes
  and sent with ``sid`` on connect; a reconnecting client of the running prompt
  gets ``executing {node: <current>}``. Like ComfyUI, a socket's close removes
  whatever socket is registered under its client id;
* ``GET /history/{id}`` is ``{}`` until the prompt is done;
* ``POST /interrupt {"prompt_id"}`` stops only that prompt if it is running,
  no body stops whatever runs, always 200; ``POST /queue {"delete": [...]}``
  removes pending prompts;
* ``/upload/image``, ``/view``, ``/queue``, ``/system_stats``, ``/prompt`` (GET),
  all also under ``/api``;
* ``GET /object_info`` (every node type the fake knows, or the subset given as
  ``nodes``), ``GET /models`` and ``GET /models/{folder}`` as ComfyUI 0.3.64
  serves them (``server.py`` ``node_info``/``get_models``, unchanged in 0.8):
  classic combo inputs as ``[[choice, ...], {...}]``, model loader inputs
  listing the installed files of their folder, ``/models/{folder}`` a flat list
  of file names or a bare 404 for an unknown folder. ``POST /prompt`` checks
  loader values against the installed files (``value_not_in_list``), as
  ComfyUI does; installed files default to what the packaged templates load.

Scriptable per prompt through :class:`Script` (execution time, node errors,
a node failing at run time, dropping every WebSocket mid-run and refusing
reconnects for a while, silence, several output images) and globally
(upload and ``/view`` latency, stop/start to simulate ComfyUI being down or
restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import json
import struct
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

COMFYUI_VERSION = "0.8.0"
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "res_multistep"]
SCHEDULERS = ["simple", "normal", "karras", "exponential", "sgm_uniform", "beta"]
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
BINARY_PREVIEW_IMAGE = 1
PREVIEW_JPEG = 1


@dataclass(frozen=True)
class Spec:
    """What the fake knows of a node class: required inputs, bounds, combos."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    combos: Mapping[str, list[str]] = field(default_factory=dict)
    output_node: bool = False
    sampler: bool = False
    models: Mapping[str, str] = field(default_factory=dict)
    """Inputs whose choices are the files of a model folder."""
    category: str = "image"


# What the packaged templates load; installed unless a test says otherwise.
PACKAGED_MODELS: dict[str, list[str]] = {
    "diffusion_models": ["qwen_image_edit_2509_fp8_e4m3fn.safetensors"],
    "text_encoders": ["qwen_2.5_vl_7b_fp8_scaled.safetensors"],
    "vae": ["qwen_image_vae.safetensors"],
    "loras": [
        "Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors",
        "镜头转换.safetensors",
    ],
}
# ``folder_paths.folder_names_and_paths`` keys of ComfyUI 0.3.64 (``GET /models``).
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
    "gligen", "upscale_models", "latent_upscale_models", "custom_nodes", "hypernetworks",
    "photomaker", "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv",
              "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2",
              "qwen_image", "hunyuan_image"]  # fmt: skip


NODE_SPECS: dict[str, Spec] = {
    "LoadImage": Spec(required=("image",)),
    "LoadImageMask": Spec(required=("image", "channel")),
    "SaveImage": Spec(required=("images", "filename_prefix"), output_node=True),
    "PreviewImage": Spec(required=("images",), output_node=True),
    "UNETLoader": Spec(
        required=("unet_name", "weight_dtype"),
        combos={"weight_dtype": WEIGHT_DTYPES},
        models={"unet_name": "diffusion_models"},
        category="advanced/loaders",
    ),
    "CLIPLoader": Spec(
        required=("clip_name", "type"),
        optional=("device",),
        combos={"type": CLIP_TYPES, "device": ["default", "cpu"]},
        models={"clip_name": "text_encoders"},
        category="advanced/loaders",
    ),
    "VAELoader": Spec(required=("vae_name",), models={"vae_name": "vae"}, category="loaders"),
    "LoraLoaderModelOnly": Spec(
        required=("model", "lora_name", "strength_model"),
        bounds={"strength_model": (-100.0, 100.0)},
        models={"lora_name": "loras"},
        category="loaders",
    ),
    "ModelSamplingAuraFlow": Spec(required=("model", "shift"), bounds={"shift": (0.0, 100.0)}),
    "CFGNorm": Spec(required=("model", "strength"), bounds={"strength": (0.0, 100.0)}),
    "FluxKontextImageScale": Spec(required=("image",)),
    "ImageScale": Spec(
        required=("image", "upscale_method", "width", "height", "crop"),
        bounds={"width": (0, 16384), "height": (0, 16384)},
        combos={"upscale_method": UPSCALE, "crop": ["disabled", "center"]},
    ),
    "ImageInvert": Spec(required=("image",)),
    "TextEncodeQwenImageEditPlus": Spec(
        required=("clip", "prompt"), optional=("vae", "image1", "image2", "image3")
    ),
    "VAEEncode": Spec(required=("pixels", "vae")),
    "VAEDecode": Spec(required=("samples", "vae")),
    "EmptySD3LatentImage": Spec(required=("width", "height", "batch_size")),
    "KSampler": Spec(
        required=(
            "model",
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "positive",
            "negative",
            "latent_image",
            "denoise",
        ),
        bounds={
            "seed": (0, 2**64 - 1),
            "steps": (1, 10000),
            "cfg": (0.0, 100.0),
            "denoise": (0.0, 1.0),
        },
        combos={"sampler_name": SAMPLERS, "scheduler": SCHEDULERS},
        sampler=True,
    ),
}


@dataclass
class Script:
    """How the fake treats one prompt."""

    exec_s: float = 0.2
    """Wall time of the whole execution (the sampler takes most of it)."""
    images: int = 1
    """Images each ``SaveImage`` node writes (a batch)."""
    node_errors: dict[str, list[dict[str, Any]]] | None = None
    """Extra validation errors by node id, as ComfyUI lists them."""
    fail_node: str | None = None
    """Node that raises while executing (``execution_error``)."""
    exception_type: str = "RuntimeError"
    exception_message: str = "boom"
    uninterruptible: bool = False
    """The sampler node does not check for interrupts: it runs to its end first."""
    drop_ws_at: float | None = None
    """Fraction of ``exec_s`` after which every WebSocket is closed by the server."""
    refuse_ws_s: float = 0.0
    """After dropping, answer WebSocket upgrades with 503 for this long."""
    silent: bool = False
    """Send no WebSocket events for this prompt (lost events)."""
    previews: bool = True
    """Send binary preview frames with sampler progress."""


@dataclass(order=True)
class _Item:
    number: float
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)
    script: Script = field(compare=False)

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass(frozen=True)
class Execution:
    """One prompt's time on the (fake) GPU."""

    prompt_id: str
    started: float
    ended: float
    status: str


class FakeComfyUI:
    """Run with ``async with FakeComfyUI() as comfy:``; ``comfy.url`` is its base URL."""

    def __init__(
        self,
        *,
        default: Script | None = None,
        upload_latency_s: float = 0.0,
        view_latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Mapping[str, list[str]] | None = None,
        nodes: set[str] | None = None,
    ) -> None:
        self.default = default or Script()
        self.models: dict[str, list[str]] = {
            k: list(v) for k, v in (PACKAGED_MODELS if models is None else models).items()
        }
        """Installed model files by folder (change them while running, as an operator would)."""
        self.nodes: set[str] = set(NODE_SPECS) if nodes is None else set(nodes)
        """Node types installed (custom nodes missing from a server are left out here)."""
        self.scripts: deque[Script] = deque()
        """Consumed one per accepted prompt, in submission order; then ``default``."""
        self.upload_latency_s = upload_latency_s
        self.view_latency_s = view_latency_s
        self.host = host
        self.port = port
        # Observations for tests.
        self.submitted: list[dict[str, Any]] = []
        self.interrupts: list[str | None] = []
        self.queue_deletes: list[str] = []
        self.executions: list[Execution] = []
        self.ws_connects = 0
        self.requests: list[tuple[str, str, float]] = []
        """(method, path without /api, monotonic time the request arrived)."""
        self.fail_next: dict[str, int] = {}
        """Path → status: answer the next request to that path with this 5xx."""
        self._reset_state()
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None

    def _reset_state(self) -> None:
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[tuple[str, str, str], bytes] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self._pending: list[_Item] = []
        self._running: _Item | None = None
        self._current_node: str | None = None
        self._interrupt = False
        self._counter = 0
        self._file_counters: dict[str, int] = {}
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._refuse_ws_until = 0.0
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        """Wake ``wait_until`` callers: the queue or the running prompt changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running_prompt_id(self) -> str | None:
        return self._running.prompt_id if self._running else None

    @property
    def running_node(self) -> str | None:
        """The node the running prompt executes now."""
        return self._current_node

    async def wait_node(self, node_id: str, timeout: float = 5.0) -> None:
        """Until the running prompt reaches ``node_id``."""
        await self.wait_until(lambda: self._current_node == node_id, timeout)

    @property
    def pending_prompt_ids(self) -> list[str]:
        return [item.prompt_id for item in sorted(self._pending)]

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again, on the same port after a ``stop``)."""
        app = web.Application(client_max_size=100 * 1024 * 1024)
        for prefix in ("", "/api"):
            app.router.add_post(prefix + "/prompt", self._post_prompt)
            app.router.add_get(prefix + "/prompt", self._get_prompt)
            app.router.add_get(prefix + "/history", self._get_history_all)
            app.router.add_get(prefix + "/history/{prompt_id}", self._get_history)
            app.router.add_get(prefix + "/queue", self._get_queue)
            app.router.add_post(prefix + "/queue", self._post_queue)
            app.router.add_post(prefix + "/interrupt", self._post_interrupt)
            app.router.add_post(prefix + "/upload/image", self._upload_image)
            app.router.add_get(prefix + "/view", self._view)
            app.router.add_get(prefix + "/system_stats", self._system_stats)
            app.router.add_get(prefix + "/object_info", self._object_info)
            app.router.add_get(prefix + "/models", self._model_folders)
            app.router.add_get(prefix + "/models/{folder}", self._model_files)
        app.router.add_get("/ws", self._ws)
        app.middlewares.append(self._middleware)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._worker = asyncio.create_task(self._work(), name="fake-comfyui-worker")

    async def stop(self, *, lose_state: bool = False) -> None:
        """Stop listening (connections refused from now on).

        ``lose_state`` forgets queue and history, as a restarted ComfyUI does.
        """
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for ws in list(self._sockets.values()):
            await ws.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if lose_state:
            self._reset_state()
        elif self._running is not None:
            # A prompt cut off by the stop goes back to the front of the queue.
            heapq.heappush(self._pending, self._running)
            self._running = None

    async def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Until ``predicate()`` holds, re-checked whenever the queue changes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until nothing is running or pending."""
        await self.wait_until(lambda: self._running is None and not self._pending, timeout)

    async def wait_running(self, timeout: float = 5.0) -> str:
        """Until a prompt executes; its id."""
        await self.wait_until(lambda: self._running is not None, timeout)
        assert self._running is not None
        return self._running.prompt_id

    async def wait_pending(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Until ``count`` prompts wait in the queue; their ids."""
        await self.wait_until(lambda: len(self._pending) >= count, timeout)
        return self.pending_prompt_ids

    # -- HTTP -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path.removeprefix("/api")
        self.requests.append((request.method, path, time.monotonic()))
        status = self.fail_next.pop(path, None)
        if status is not None:
            return web.Response(status=status, text="500 Internal Server Error")
        response: web.StreamResponse = await handler(request)
        return response

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.submitted.append(body)
        if "prompt" not in body:
            return _error(400, "no_prompt", "No prompt provided", "No prompt provided")
        prompt_id = body.get("prompt_id")
        if prompt_id is None:
            prompt_id = str(uuid.uuid4())
        elif not _canonical_uuid(prompt_id):
            return _error(
                400,
                "invalid_prompt_id",
                "Invalid prompt_id",
                f"prompt_id must be a canonical UUID: {prompt_id!r}",
            )
        prompt = body["prompt"]
        script = self.scripts.popleft() if self.scripts else self.default
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in self.nodes:
                return _error(
                    400,
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [nid for nid, n in prompt.items() if NODE_SPECS[n["class_type"]].output_node]
        if not outputs:
            response = {
                "error": {
                    "type": "prompt_no_outputs",
                    "message": "Prompt has no outputs",
                    "details": "",
                    "extra_info": {},
                },
                "node_errors": [],
            }
            return web.json_response(response, status=400)
        node_errors = _validate(prompt, self.inputs, self.models)
        for node_id, errors in (script.node_errors or {}).items():
            node_errors.setdefault(
                node_id,
                {
                    "errors": [],
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )["errors"].extend(errors)
        good = []
        for out in outputs:
            bad = _ancestors(prompt, out) & set(node_errors)
            for node_id in bad:
                node_errors[node_id]["dependent_outputs"].append(out)
            if not bad:
                good.append(out)
        if not good:
            details = "\n".join(
                f"{prompt[nid]['class_type']} {nid}: {e['message']}: {e['details']}"
                for nid, info in node_errors.items()
                for e in info["errors"]
            )
            response = {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": details,
                    "extra_info": {},
                },
                "node_errors": node_errors,
            }
            return web.json_response(response, status=400)
        number = float(self._counter)
        self._counter += 1
        extra_data = dict(body.get("extra_data") or {})
        if body.get("client_id") is not None:
            extra_data["client_id"] = body["client_id"]
        extra_data["create_time"] = int(time.time() * 1000)
        heapq.heappush(self._pending, _Item(number, prompt_id, prompt, extra_data, good, script))
        self._wake.set()
        self._notify()
        await self._broadcast_status()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._remaining()}})

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _get_history_all(self, request: web.Request) -> web.Response:
        return web.json_response(self.history)

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.as_list()] if self._running else []
        pending = [item.as_list() for item in sorted(self._pending)]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
        for prompt_id in body.get("delete", []):
            self.queue_deletes.append(prompt_id)
            self._pending = [i for i in self._pending if i.prompt_id != prompt_id]
            heapq.heapify(self._pending)
        self._notify()
        await self._broadcast_status()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        body: Any = None
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.interrupts.append(prompt_id)
        if self._running is not None and prompt_id in (None, self._running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _upload_image(self, request: web.Request) -> web.Response:
        if self.upload_latency_s:
            await asyncio.sleep(self.upload_latency_s)
        form = await request.post()
        image = form.get("image")
        if not isinstance(image, web.FileField):
            return web.Response(status=400)
        subfolder = str(form.get("subfolder", ""))
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        data = image.file.read()
        name = image.filename
        key = f"{subfolder}/{name}" if subfolder else name
        if not overwrite and key in self.inputs and self.inputs[key] != data:
            stem, dot, ext = name.rpartition(".")
            n = 1
            while True:
                name = f"{stem} ({n}){dot}{ext}"
                key = f"{subfolder}/{name}" if subfolder else name
                if key not in self.inputs or self.inputs[key] == data:
                    break
                n += 1
        self.inputs[key] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})

    async def _view(self, request: web.Request) -> web.Response:
        if self.view_latency_s:
            await asyncio.sleep(self.view_latency_s)
        query = request.rel_url.query
        filename = query.get("filename")
        if filename is None:
            return web.Response(status=404)
        if filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        key = (query.get("type", "output"), query.get("subfolder", ""), filename)
        data = self.outputs.get(key)
        if data is None:
            return web.Response(status=404)
        return web.Response(
            body=data,
            content_type="image/png",
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 128 * 2**30,
                    "ram_free": 100 * 2**30,
                    "comfyui_version": COMFYUI_VERSION,
                    "python_version": "3.12.3",
                    "pytorch_version": "2.9.0+cu128",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "127.0.0.1"],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 80 * 2**30,
                        "vram_free": 60 * 2**30,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {name: _node_info(name, NODE_SPECS[name], self.models) for name in sorted(self.nodes)}
        )

    async def _model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def _model_files(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(sorted(self.models.get(folder, [])))

    # -- WebSocket --------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_ws_until:
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connects += 1
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        self._sockets[sid] = ws
        try:
            await ws.send_json(
                {
                    "type": "status",
                    "data": {
                        "status": {"exec_info": {"queue_remaining": self._remaining()}},
                        "sid": sid,
                    },
                }
            )
            running = self._running
            if running is not None and running.extra_data.get("client_id") == sid:
                await ws.send_json(
                    {
                        "type": "executing",
                        "data": {
                            "node": self._current_node,
                            "display_node": self._current_node,
                            "prompt_id": running.prompt_id,
                        },
                    }
                )
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError):
                        data = json.loads(message.data)
                        if data.get("type") == "feature_flags":
                            await ws.send_json({"type": "feature_flags", "data": {}})
        finally:
            # As in ComfyUI: whatever socket is registered under this id goes.
            self._sockets.pop(sid, None)
        return ws

    async def _send(self, sid: str | None, event: str, data: dict[str, Any]) -> None:
        """To one client, or to all when ``sid`` is None (ComfyUI's send_sync)."""
        targets = list(self._sockets.values()) if sid is None else [self._sockets.get(sid)]
        for ws in targets:
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_json({"type": event, "data": data})

    async def _send_bytes(self, sid: str, payload: bytes) -> None:
        ws = self._sockets.get(sid)
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(payload)

    async def _broadcast_status(self) -> None:
        await self._send(
            None, "status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        )

    def _remaining(self) -> int:
        return len(self._pending) + (1 if self._running else 0)

    async def drop_sockets(self) -> None:
        """Close every WebSocket from the server side."""
        for ws in list(self._sockets.values()):
            await ws.close()

    # -- execution --------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            item = heapq.heappop(self._pending)
            self._running = item
            self._interrupt = False
            self._notify()
            await self._execute(item)

    async def _execute(self, item: _Item) -> None:
        script = item.script
        sid = item.extra_data.get("client_id")
        target = None if script.silent else sid
        pid = item.prompt_id
        messages: list[list[Any]] = []
        started = time.monotonic()

        async def event(name: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
            data = {**data, "prompt_id": pid} if "prompt_id" not in data else data
            if name in ("execution_start", "execution_cached", "execution_success",
                        "execution_error", "execution_interrupted"):  # fmt: skip
                messages.append([name, data])
            if broadcast:
                await self._send(None, name, data)
            elif target is not None:  # ComfyUI drops targeted events without a client id
                await self._send(target, name, data)

        dropped = False

        async def maybe_drop() -> None:
            nonlocal dropped
            if script.drop_ws_at is None or dropped:
                return
            if time.monotonic() - started >= script.drop_ws_at * script.exec_s:
                dropped = True
                self._refuse_ws_until = time.monotonic() + script.refuse_ws_s
                await self.drop_sockets()

        await event("execution_start", {"prompt_id": pid, "timestamp": _ms()})
        await event("execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": _ms()})
        order = _topological(item.prompt, item.outputs)
        samplers = [n for n in order if NODE_SPECS[item.prompt[n]["class_type"]].sampler]
        other_s = script.exec_s * (0.1 if samplers else 1.0) / max(1, len(order))
        sampler_s = script.exec_s * 0.9 / len(samplers) if samplers else 0.0
        outputs: dict[str, Any] = {}
        executed: list[str] = []
        status = "success"
        for node_id in order:
            node = item.prompt[node_id]
            class_type = node["class_type"]
            spec = NODE_SPECS[class_type]
            self._current_node = node_id
            self._notify()
            await self._progress_state(target, pid, node_id, "running")
            await event("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
            if spec.sampler:
                steps = node["inputs"].get("steps")
                steps = steps if isinstance(steps, int) and steps > 0 else 4
                for step in range(1, steps + 1):
                    await asyncio.sleep(sampler_s / steps)
                    await maybe_drop()
                    if self._interrupt and not script.uninterruptible:
                        break
                    await event(
                        "progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id}
                    )
                    if script.previews and target is not None:
                        await self._send_bytes(target, _preview_frame())
            else:
                await asyncio.sleep(other_s)
                await maybe_drop()
            if self._interrupt:
                status = "interrupted"
                await event(
                    "execution_interrupted",
                    {
                        "prompt_id": pid,
                        "node_id": node_id,
                        "node_type": class_type,
                        "executed": executed,
                        "timestamp": _ms(),
                    },
                    broadcast=True,
                )
                break
            if node_id == script.fail_node:
                status = "error"
                await event(
                    "execution_error",
                    {
                        "prompt_id": pid,
                        "node_id": node_id,
                        "node_type": class_type,
                        "executed": executed,
                        "exception_message": script.exception_message,
                        "exception_type": script.exception_type,
                        "traceback": ["Traceback (most recent call last):\n", "  ...\n"],
                        "current_inputs": {},
                        "current_outputs": {},
                        "timestamp": _ms(),
                    },
                )
                break
            if class_type in ("SaveImage", "PreviewImage"):
                ui = {"images": self._save_images(node, script.images, class_type == "SaveImage")}
                outputs[node_id] = ui
                await event(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid},
                )
            executed.append(node_id)
            await self._progress_state(target, pid, node_id, "finished")
        if status == "success":
            await event("execution_success", {"prompt_id": pid, "timestamp": _ms()})
        ended = time.monotonic()
        # main.py: task_done (history) first, then executing {node: null}.
        self.history[pid] = {
            "prompt": item.as_list(),
            "outputs": outputs,
            "status": {
                "status_str": "success" if status == "success" else "error",
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in outputs
            },
        }
        self.executions.append(Execution(pid, started, ended, status))
        self._running = None
        self._current_node = None
        self._notify()
        if sid is not None and not script.silent:
            await self._send(sid, "executing", {"node": None, "prompt_id": pid})
        await self._broadcast_status()

    async def _progress_state(self, sid: str | None, pid: str, node_id: str, state: str) -> None:
        if sid is None:
            return
        value = 1.0 if state == "finished" else 0.0
        await self._send(
            sid,
            "progress_state",
            {
                "prompt_id": pid,
                "nodes": {
                    node_id: {
                        "value": value,
                        "max": 1.0,
                        "state": state,
                        "node_id": node_id,
                        "prompt_id": pid,
                        "display_node_id": node_id,
                        "parent_node_id": None,
                        "real_node_id": node_id,
                    }
                },
            },
        )

    def _save_images(self, node: dict[str, Any], count: int, save: bool) -> list[dict[str, str]]:
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI")) if save else "ComfyUI_temp"
        subfolder, _, base = prefix.rpartition("/")
        kind = "output" if save else "temp"
        images = []
        for index in range(count):
            counter = self._file_counters.get(prefix, 0) + 1
            self._file_counters[prefix] = counter
            filename = f"{base}_{counter:05}_.png"
            self.outputs[(kind, subfolder, filename)] = png_bytes(index)
            images.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return images


# -- helpers -------------------------------------------------------------------------


def png_bytes(index: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real PNG whose colour depends on ``index``, so outputs are distinguishable."""
    colour = ((index * 70) % 256, (120 + index * 40) % 256, (200 + index * 25) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _preview_frame() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buffer, format="JPEG")
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, PREVIEW_JPEG) + buffer.getvalue()


def _ms() -> int:
    return int(time.time() * 1000)


def _canonical_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _error(status: int, kind: str, message: str, details: str) -> web.Response:
    body = {
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": {},
    }
    return web.json_response(body, status=status)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _ancestors(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        stack.extend(str(v[0]) for v in prompt[current]["inputs"].values() if _is_link(v))
    return seen


def _topological(prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
    needed: set[str] = set()
    for out in outputs:
        needed |= _ancestors(prompt, out)
    order: list[str] = []
    done: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in done:
            return
        done.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if _is_link(value):
                visit(str(value[0]))
        order.append(node_id)

    for node_id in sorted(needed, key=lambda n: (len(n), n)):
        visit(node_id)
    return order


def _validate(
    prompt: Mapping[str, Any], inputs: Mapping[str, bytes], models: Mapping[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """Per-node validation errors, shaped like ComfyUI's ``node_errors``."""
    node_errors: dict[str, dict[str, Any]] = {}
    for node_id, node in prompt.items():
        spec = NODE_SPECS[node["class_type"]]
        values = node.get("inputs", {})
        errors: list[dict[str, Any]] = []
        for name in spec.required:
            if name not in values:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
        for name, value in values.items():
            if _is_link(value):
                if str(value[0]) not in prompt:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [string, int]",
                            "details": f"{name}",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
                continue
            if name in spec.bounds and isinstance(value, int | float):
                low, high = spec.bounds[name]
                if value < low:
                    errors.append(
                        _range_error("value_smaller_than_min", "smaller than min", name, value, low)
                    )
                elif value > high:
                    errors.append(
                        _range_error("value_bigger_than_max", "bigger than max", name, value, high)
                    )
            choices = _choices(spec, name, models)
            if choices is not None and value not in choices:
                errors.append(
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{name}: '{value}' not in {choices}",
                        "extra_info": {"input_name": name, "received_value": value},
                    }
                )
        if node["class_type"] == "LoadImage" and values.get("image") not in inputs:
            errors.append(
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"image - Invalid image file: {values.get('image')}",
                    "extra_info": {"input_name": "image"},
                }
            )
        if errors:
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": [],
                "class_type": node["class_type"],
            }
    return node_errors


def _choices(spec: Spec, name: str, models: Mapping[str, list[str]]) -> list[str] | None:
    if name in spec.models:
        return sorted(models.get(spec.models[name], []))
    return spec.combos.get(name)


def _input_spec(spec: Spec, name: str, models: Mapping[str, list[str]]) -> list[Any]:
    """One input as ``/object_info`` describes it (the classic, pre-v3 shapes)."""
    choices = _choices(spec, name, models)
    if choices is not None:
        return [choices, {}] if name in spec.models else [choices]
    if name in spec.bounds:
        low, high = spec.bounds[name]
        kind = "INT" if isinstance(low, int) and isinstance(high, int) else "FLOAT"
        return [kind, {"default": low, "min": low, "max": high}]
    if name in ("prompt", "filename_prefix"):
        return ["STRING", {"multiline": name == "prompt"}]
    return [name.upper().rstrip("0123456789")]


def _node_info(name: str, spec: Spec, models: Mapping[str, list[str]]) -> dict[str, Any]:
    """A ``GET /object_info`` entry as ComfyUI 0.3.64's ``node_info`` builds it."""
    required = {i: _input_spec(spec, i, models) for i in spec.required}
    optional = {i: _input_spec(spec, i, models) for i in spec.optional}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    return {
        "input": inputs,
        "input_order": {group: list(values) for group, values in inputs.items()},
        "output": [] if spec.output_node else ["IMAGE"],
        "output_is_list": [] if spec.output_node else [False],
        "output_name": [] if spec.output_node else ["IMAGE"],
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": "nodes",
        "category": spec.category,
        "output_node": spec.output_node,
    }


def _range_error(kind: str, words: str, name: str, value: float, bound: float) -> dict[str, Any]:
    return {
        "type": kind,
        "message": f"Value {value} {words} of {bound}",
        "details": f"{name}",
        "extra_info": {"input_name": name, "received_value": value},
    }
