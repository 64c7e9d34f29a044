"""An ONNX file's weights as a torch state dict, and named key maps from one architecture's names to another's.

An exporter keeps a module's parameter names for most initialisers but not for the weights of linear layers,
which it stores transposed under anonymous names (`onnx::MatMul_1966`); those are named here by the bias the
MatMul's output is added to (`...query.bias` -> `...query.weight`, transposed back). Any other anonymous
initialiser is named by the node that reads it (`/backbone/embeddings/Concat_6` -> `backbone.embeddings.Concat_6`),
which a key map can then place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import BadInput
from .lazy import np, torch


def onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every initialiser of the ONNX graph at `path`, named as described above."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError:
        raise BadInput(
            f"checkpoint {path} is an ONNX file: reading it needs the `onnx` package (pip install onnx, "
            "or prh-bench[zoo])"
        ) from None
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # noqa: BLE001 (protobuf raises its own DecodeError, among others)
        raise BadInput(f"checkpoint {path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    state = {}
    for init in graph.initializer:
        value = torch.from_numpy(np.array(numpy_helper.to_array(init)))
        name = init.name
        if name.startswith("onnx::"):
            name, value = _name_of_anonymous(name, value, readers, path)
        if name in state:
            raise BadInput(f"checkpoint {path}: two initialisers would both be named '{name}'")
        state[name] = value
    return state


def _name_of_anonymous(
    name: str, value: torch.Tensor, readers: dict[str, list], path: Path
) -> tuple[str, torch.Tensor]:
    users = readers.get(name, [])
    if len(users) != 1:
        raise BadInput(
            f"checkpoint {path}: the anonymous initialiser '{name}' is read by {len(users)} nodes; "
            "it cannot be named by its reader"
        )
    node = users[0]
    if node.op_type == "MatMul" and value.ndim == 2:
        adds = [n for n in readers.get(node.output[0], []) if n.op_type == "Add"]
        bias = [i for n in adds for i in n.input if i.endswith(".bias")]
        if len(bias) == 1:
            return bias[0][: -len(".bias")] + ".weight", value.T.contiguous()
    return node.name.strip("/").replace("/", "."), value


def dinov2_hf_to_timm(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model names (as an ONNX export of it keeps them, `backbone.` stripped) -> timm's
    `vit_*_patch14_dinov2`: q, k and v fused into qkv, layer scales as ls*.gamma, the final layernorm as norm;
    the position embeddings, exported as a class part (read by a Concat) and a patch grid (read by a Reshape),
    joined and, when the target's grid differs, resampled as Hugging Face does at inference (bicubic, no
    antialiasing), so the timm model computes what the exported graph computes at the target's size."""
    out: dict[str, torch.Tensor] = {}
    rename = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
    }
    for key, value in state.items():
        if not key.startswith("encoder.layer."):
            continue
        i, rest = key[len("encoder.layer.") :].split(".", 1)
        if rest.startswith("attention.attention."):
            continue  # fused below
        module, _, leaf = rest.rpartition(".")
        if rest in rename:  # a layer-scale vector has no leaf of its own
            out[f"blocks.{i}.{rename[rest]}"] = value
        elif module in rename:
            out[f"blocks.{i}.{rename[module]}.{leaf}"] = value
        else:
            raise BadInput(f"dinov2_hf_to_timm: no timm name for '{key}'")
        if rest == "norm1.weight":
            qkv = [f"encoder.layer.{i}.attention.attention.{p}" for p in ("query", "key", "value")]
            for leaf in ("weight", "bias"):
                out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([state[f"{q}.{leaf}"] for q in qkv])
    out["cls_token"] = state["embeddings.cls_token"]
    out["patch_embed.proj.weight"] = state["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = state["embeddings.patch_embeddings.projection.bias"]
    out["norm.weight"], out["norm.bias"] = state["layernorm.weight"], state["layernorm.bias"]
    if "embeddings.position_embeddings" in state:
        pos = state["embeddings.position_embeddings"]
    else:
        cls_pos = [v for k, v in state.items() if k.startswith("embeddings.Concat")]
        grid_pos = [v for k, v in state.items() if k.startswith("embeddings.Reshape")]
        if len(cls_pos) != 1 or len(grid_pos) != 1:
            raise BadInput(
                "dinov2_hf_to_timm: expected the position embeddings as embeddings.position_embeddings, "
                "or as one class part and one patch grid of an ONNX export"
            )
        pos = torch.cat([cls_pos[0].reshape(1, 1, -1), grid_pos[0].reshape(1, -1, cls_pos[0].shape[-1])], dim=1)
    out["pos_embed"] = resample_grid(pos, target["pos_embed"].shape[1] - 1)
    return out


def resample_grid(pos: torch.Tensor, patches: int) -> torch.Tensor:
    """Class position + an n x n patch grid resampled to `patches` (a square), bicubic without antialiasing, as
    Hugging Face's Dinov2 interpolate_pos_encoding (the class position kept as it is)."""
    n, m = round((pos.shape[1] - 1) ** 0.5), round(patches**0.5)
    if n * n != pos.shape[1] - 1 or m * m != patches:
        raise BadInput(
            f"position embeddings of {pos.shape[1] - 1} patches do not form a square grid to resample to {patches}"
        )
    if n == m:
        return pos
    grid = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(m, m), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, m * m, -1).to(pos.dtype)], dim=1)


#: key maps by name (a checkpoint's `key_map`), each (checkpoint state, target state) -> target-named state
KEY_MAPS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "dinov2_hf_to_timm": dinov2_hf_to_timm,
}
