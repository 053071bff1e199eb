"""Memory planner: per-rank GPU memory of a ZeRO-3 run, the largest micro batch, the step time
(`python -m mvar_dist plan`, docs/memory_planner.md)."""
from .activations import activation_model
from .memory import MemoryPlan, PlanError, PlanSettings, make_plan, predict_step_bytes
from .shapes import ModelShapes, build_meta_model, shapes_of

__all__ = ["MemoryPlan", "ModelShapes", "PlanError", "PlanSettings", "activation_model", "build_meta_model",
           "make_plan", "predict_step_bytes", "shapes_of"]
