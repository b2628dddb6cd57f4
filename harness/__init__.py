"""adaptbench's engine: registries, ``adapt``, training, measurement, results and the CLI.

Public API::

    import harness
    model = timm.create_model("vit_base_patch16_224", pretrained=True)
    harness.adapt(model, "lora")                     # patches the timm ViT in place and returns it
    harness.save_adapter(model, "lora.adapter.safetensors", {"method": "lora"})  # trained: LoRA + head
    fresh = harness.adapt(timm.create_model("vit_base_patch16_224", pretrained=True), "lora")
    harness.load_adapter(fresh, "lora.adapter.safetensors")     # the trained model again

    @harness.register_method("my_method")            # a plugin: one file, loaded with --plugins
    def my_method(model, compression=None): ...
"""
from .adapt import adapt, merge_for_inference, record_info, set_lr_scale, set_trainable
from .adapters import load_adapter, read_adapter_facts, save_adapter
from .backbones import create_backbone, lora_rank_for  # importing it registers the micro ViTs with timm
from .data import ArrayDataset, ImageList, TaskData
from .errors import RunFailed, UserError
from .registry import load_plugins, register_method, register_task

__all__ = [
    "adapt", "merge_for_inference", "record_info", "set_lr_scale", "set_trainable", "load_adapter",
    "read_adapter_facts", "save_adapter", "create_backbone", "lora_rank_for", "ArrayDataset",
    "ImageList", "TaskData", "RunFailed", "UserError", "load_plugins", "register_method", "register_task",
]
