"""``comfy_workflow``: run one of the operator's own ComfyUI graphs by name.

For studios that bring their own workflows. Off unless
``[handlers.options.comfy_workflow] enabled = true`` and ``workflow_dir`` is
set; every ``*.json`` there is loaded and checked at start-up, and a job names
one by file stem. Inputs follow the marker convention of
:mod:`shortdrama_worker.comfy.workflows`:

* ``images`` maps markers placed on ``LoadImage``/``LoadImageMask`` nodes to
  image references; those are fetched and uploaded. An image marker a job
  leaves out is pruned from the graph, with the nodes that only it fed;
* ``values`` maps any other marker to a string, number or boolean;
* ``seed``, when the graph has a ``$seed`` marker and ``values`` does not set
  it, is the given seed or one derived from the job id.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, StringConstraints, model_validator

from shortdrama_worker.comfy.errors import ComfyWorkflowCannotRunError
from shortdrama_worker.comfy.workflows import Scalar, Workflow, WorkflowError, load_directory
from shortdrama_worker.contract import (
    HandlerInput,
    JobContext,
    JobError,
    PermanentJobError,
    Provenance,
)
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.handlers.comfy_common import (
    MAX_SEED,
    ComfyHandler,
    ComfySettings,
    ImageInput,
)

IMAGE_LOADERS = frozenset({"LoadImage", "LoadImageMask"})
MarkerName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class ComfyWorkflowSettings(ComfySettings):
    """Adds the switch; ``workflow_dir`` is required once it is on."""

    enabled: bool = Field(default=False, description="Serve the operator's workflows.")

    @model_validator(mode="after")
    def _dir_when_enabled(self) -> ComfyWorkflowSettings:
        if self.enabled and self.workflow_dir is None:
            raise ValueError("workflow_dir is required when comfy_workflow is enabled")
        return self


class ComfyWorkflowInput(HandlerInput):
    """A workflow name with its image and value inputs, addressed by marker."""

    workflow: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="File stem of a template in the operator's workflow directory.",
    )
    images: dict[MarkerName, ImageRef] = Field(
        default_factory=dict,
        max_length=8,
        description="Marker (on a LoadImage node) → image reference.",
    )
    values: dict[MarkerName, Annotated[Scalar, Field(union_mode="left_to_right")]] = Field(
        default_factory=dict,
        max_length=64,
        description="Marker → value for the marked input.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed for a $seed marker; derived from the job id if unset.",
    )


class ComfyWorkflowHandler(ComfyHandler):
    """Run a named operator workflow (disabled unless enabled in its settings)."""

    slug: ClassVar[str | None] = "comfy-workflow"
    input_model: ClassVar[type[BaseModel]] = ComfyWorkflowInput
    settings_model: ClassVar[type[BaseModel]] = ComfyWorkflowSettings
    # Other workflows still run; a job for this one is refused before any upload.
    cannot_run_error: ClassVar[type[JobError]] = ComfyWorkflowCannotRunError
    description: ClassVar[str] = (
        "Run one of the operator's ComfyUI workflows by name with named image and value inputs."
    )

    # The operator's graph is unknown here; ComfyUI graphs generate pixels with a
    # model, so that is what is claimed (an edit of the first image, if any).
    provenance: ClassVar[Provenance | None] = Provenance(
        action="c2pa.edited",
        source_type="trainedAlgorithmicMedia",
        provider="comfyui",
        description="an operator workflow run in ComfyUI",
    )

    workflows: dict[str, Workflow]

    @property
    def enabled(self) -> bool:
        """Whether the operator turned this handler on (the host may hide it otherwise)."""
        config = getattr(self, "config", None)
        return isinstance(config, ComfyWorkflowSettings) and config.enabled

    async def startup(self) -> None:
        """Load and check every template when enabled; probe ComfyUI either way.

        Even when disabled the handler reports ComfyUI's reachability in
        ``ready()``, like its siblings: the consumer takes GPU work when *any*
        GPU handler is ready, so a disabled one answering "ready" regardless
        would let jobs burn their attempts against a ComfyUI that is down.
        """
        self.workflows = {}
        await super().startup()

    def templates(self) -> Mapping[str, Workflow]:
        return self.workflows

    def load_workflows(self, *, reload: bool = False) -> None:
        """Every template in the directory; at start-up a bad one stops it.

        On a reload a bad file is logged and its previous version (if any)
        kept, so one half-saved file does not take the other workflows away.
        """
        if not self.enabled:
            return
        assert self.config.workflow_dir is not None
        directory = Path(self.config.workflow_dir)
        if not reload:
            self.workflows = load_directory(directory)
        else:
            self.workflows = self._reload_directory(directory)
        if not self.workflows:
            self.env.log.warning("comfy_workflow_dir_empty", dir=str(self.config.workflow_dir))

    def _reload_directory(self, directory: Path) -> dict[str, Workflow]:
        if not directory.is_dir():
            raise WorkflowError(f"workflow directory not found: {directory}")
        loaded: dict[str, Workflow] = {}
        for path in sorted(directory.glob("*.json")):
            try:
                loaded[path.stem] = Workflow.load(path)
            except WorkflowError as exc:
                previous = self.workflows.get(path.stem)
                self.env.log.error(
                    "comfy_workflow_reload_failed",
                    error=str(exc),
                    kept="previous" if previous is not None else "none",
                )
                if previous is not None:
                    loaded[path.stem] = previous
        return loaded

    async def run(self, params: Any, ctx: JobContext) -> dict[str, Any]:
        """Check the inputs against the template's markers, then run it."""
        if not self.enabled:
            raise PermanentJobError(
                "comfy_workflow is disabled; set [handlers.options.comfy_workflow] enabled = true",
                code="handler_disabled",
            )
        if not isinstance(params, ComfyWorkflowInput):
            params = ComfyWorkflowInput.model_validate(params)
        workflow = self.workflows.get(params.workflow)
        if workflow is None:
            raise PermanentJobError(
                f"unknown workflow {params.workflow!r}; available: "
                f"{', '.join(sorted(self.workflows)) or 'none'}",
                code="unknown_workflow",
            )
        image_markers = {m for m in workflow.markers if workflow.class_of(m) <= IMAGE_LOADERS}
        value_markers = set(workflow.markers) - image_markers
        self._check(params.images, image_markers, "images", workflow)
        self._check(params.values, value_markers, "values", workflow)
        values: dict[str, Scalar] = dict(params.values)
        seed: int | None = None
        if "seed" in value_markers and "seed" not in values:
            seed = self.seed_for(params.seed, ctx)
            values["seed"] = seed
        images = [ImageInput(m, ref, f"images.{m}") for m, ref in sorted(params.images.items())]
        result = await self.execute(
            ctx,
            workflow,
            images=images,
            values=values,
            omit=sorted(image_markers - set(params.images)),
        )
        if seed is not None:
            result["seed"] = seed
        return result

    @staticmethod
    def _check(given: dict[str, Any], allowed: set[str], field: str, workflow: Workflow) -> None:
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise PermanentJobError(
                f"{field}: workflow {workflow.name!r} has no {field[:-1]} marker "
                f"{', '.join('$' + u for u in unknown)}; it has "
                f"{', '.join('$' + a for a in sorted(allowed)) or 'none'}",
                code="invalid_input",
            )
