"""Loading Qwen2.5-Omni-7B-AWQ's 4-bit decoder layers and running them on PyTorch's int4 kernels.

Why not the usual stacks:
- transformers 5.x hands ``quant_method: awq`` to gptqmodel, which needs torch >= 2.14 (the CPU
  test stack pins 2.13), installs from source with its CUDA extensions, and converts every Linear
  not listed in ``modules_to_not_convert`` -- the published config lists only ``visual``, so the
  fp16 audio tower would be turned into empty 4-bit layers.
- AutoAWQ (the model authors' stack with transformers 4.52) is archived and pinned to old
  transformers internals.

AutoAWQ's GEMM format is simple and fixed (int32-packed nibbles in a known interleaving, group-wise
fp16 scales and packed zero points), and PyTorch ships tuned int4 group-quantised matmuls
(``_weight_int4pack_mm``: the "tinygemm" kernel on CUDA Ampere and newer, and a CPU kernel). The
conversion below is exact: ``w = (q - z) * s`` becomes tinygemm's ``w = (q - 8) * s + (8 - z) * s``.

Which modules are 4-bit is not guessed from names: exactly the Linear layers of the thinker's text
decoder are converted (that is what AutoAWQ quantises for Qwen2.5-Omni), and the load fails loudly if
the checkpoint does not provide their packed tensors or carries packed tensors anywhere else.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

log = logging.getLogger(__name__)

QUANT_METHOD = "qwen_omni_awq_gemm"
PACKED_SUFFIXES = (".qweight", ".qzeros", ".scales")

# Position of natural column j among the 8 nibbles of an AutoAWQ GEMM int32 (inverse of the
# packing order 0, 2, 4, 6, 1, 3, 5, 7).
_AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_NIBBLE_SHIFTS = tuple(range(0, 32, 4))


class AwqCheckpointError(ValueError):
    """The checkpoint's quantisation is not the AWQ GEMM layout this loader supports."""


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM int32 [rows, cols/8] -> int4 values as int32 [rows, cols], natural column order."""
    shifts = torch.tensor(_NIBBLE_SHIFTS, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF
    nibbles = nibbles[..., list(_AWQ_UNPACK_ORDER)]
    return nibbles.reshape(packed.shape[0], -1)


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float weight [out, in] that AutoAWQ's GEMM tensors encode: (q - z) * s."""
    q = unpack_awq(qweight)
    z = unpack_awq(qzeros).repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z).float() * s).t()


def _inner_k_tiles(in_features: int) -> int:
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise AwqCheckpointError(f"in_features={in_features} is not a multiple of 32; tinygemm cannot pack it")


def _cuda_has_tinygemm(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def _pack_int4(q: torch.Tensor, kernel: str, tiles: int) -> torch.Tensor:
    """int4 values [out, in] (int32) in the layout of ``kernel``'s matmul."""
    if kernel == "tinygemm-cuda":
        pairs = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), tiles)


class Int4Unpacker:
    """Recovers the int4 values [out, in] from a kernel's packed weight, to dequantise it for large inputs.

    Neither packing op has an inverse in PyTorch. Both layouts are tiled, tile after tile in (row block,
    column block) order: the CPU kernel stores BLOCK_N rows x 1 column in BLOCK_N/2 bytes (BLOCK_N is 64
    with AVX512, 32 with AVX2, and so on: each size is tried), tinygemm 8 rows x 16*inner_k_tiles columns in
    64*inner_k_tiles bytes. The order of the values inside a tile is learnt from the packing op itself
    (probes whose values spell each value's position, one hex digit per probe), and the whole scheme is
    checked on a random matrix of several tiles: a layout that differs raises AwqCheckpointError, and large
    inputs keep the int4 kernel.
    """

    def __init__(self, kernel: str, tiles: int, device: torch.device) -> None:
        self.kernel = kernel
        self.tiles = tiles
        shapes = [(8, 16 * tiles)] if kernel == "tinygemm-cuda" else [(64, 1), (32, 1), (16, 1), (8, 1)]
        for self.tile_rows, self.tile_cols in shapes:
            if self._learn(device):
                return
        raise AwqCheckpointError(f"the {kernel} int4 layout is not the one this unpacker knows")

    def _learn(self, device: torch.device) -> bool:
        """Learn the order inside a tile of the current shape; whether it unpacks a random matrix exactly."""
        probe_rows, probe_cols = 2 * self.tile_rows, max(2 * self.tile_cols, 32 * self.tiles)
        cells = self.tile_rows * self.tile_cols
        position = (torch.arange(probe_rows, device=device) % self.tile_rows).unsqueeze(1) * self.tile_cols + \
            (torch.arange(probe_cols, device=device) % self.tile_cols).unsqueeze(0)
        found = torch.zeros(cells, dtype=torch.int64, device=device)
        for digit in range(max(1, math.ceil((cells - 1).bit_length() / 4))):
            packed = _pack_int4(((position >> (4 * digit)) & 0xF).to(torch.int32), self.kernel, self.tiles)
            if packed.numel() * packed.element_size() != probe_rows * probe_cols // 2:
                return False
            found |= self._nibbles(packed, probe_rows, probe_cols)[0, 0].long() << (4 * digit)
        # A tile of another size spells some positions twice and others never: not an order to index with.
        if not torch.equal(found.sort().values, torch.arange(cells, device=device)):
            return False
        # slot_of[p]: where, among a tile's nibbles, the value at tile position p is stored
        self.slot_of = torch.empty(cells, dtype=torch.long, device=device)
        self.slot_of[found] = torch.arange(cells, device=device)
        sample = torch.randint(0, 16, (probe_rows, probe_cols), dtype=torch.int32, device=device)
        unpacked = self.unpack(_pack_int4(sample, self.kernel, self.tiles), probe_rows, probe_cols)
        return bool(torch.equal(unpacked.int(), sample))

    def fits(self, rows: int, cols: int) -> bool:
        """Whether a [rows, cols] weight is made of whole tiles (else it keeps the int4 kernel)."""
        return rows % self.tile_rows == 0 and cols % self.tile_cols == 0

    def _tile_bytes(self) -> int:
        return self.tile_rows * self.tile_cols // 2

    def _nibbles(self, packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """[row tiles, column tiles, 2 x tile bytes] uint8: every nibble of every tile, low nibble first."""
        raw = packed.contiguous().view(torch.uint8).reshape(rows // self.tile_rows, cols // self.tile_cols,
                                                             self._tile_bytes())
        return torch.stack([raw & 0xF, raw >> 4], dim=-1).flatten(-2)

    def unpack(self, packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """The values [rows, cols] (uint8, 0..15) that ``packed`` holds."""
        tiles = self._nibbles(packed, rows, cols)[..., self.slot_of]
        tiles = tiles.reshape(rows // self.tile_rows, cols // self.tile_cols, self.tile_rows, self.tile_cols)
        return tiles.permute(0, 2, 1, 3).reshape(rows, cols)


_unpackers: dict[tuple[str, int, torch.device], Int4Unpacker | None] = {}


def unpacker_for(kernel: str, tiles: int, device: torch.device) -> Int4Unpacker | None:
    """The (cached) unpacker of ``kernel``'s layout on ``device``; None, with a warning, if it does not fit."""
    key = (kernel, tiles, device)
    if key not in _unpackers:
        try:
            _unpackers[key] = Int4Unpacker(kernel, tiles, device)
        except Exception as exc:  # whatever the packing op does with the probes, the int4 kernel still works
            log.warning("%s: large inputs stay on the int4 kernel", exc)
            _unpackers[key] = None
    return _unpackers[key]


class AwqGemmLinear(nn.Module):
    """A Linear layer stored in AutoAWQ's GEMM format (4-bit, group-wise scales and zero points).

    It is created empty, filled by the checkpoint loader (``qweight``, ``qzeros``, ``scales``, ``bias``),
    then :meth:`prepare` repacks it once for the device it lives on:
    - CPU, or CUDA with compute capability >= 8.0: PyTorch's int4 group-quantised matmul;
    - other devices: dequantise on the fly (slow, but correct, and still 4-bit in memory).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        if in_features % group_size or out_features % 8:
            raise AwqCheckpointError(
                f"a {in_features}x{out_features} Linear cannot hold AWQ group size {group_size}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.kernel: str | None = None
        self.tiles = 0
        # Inputs of at least this many rows (a prefill) run on the dequantised weight, a plain matrix product;
        # 0 = never (set_dequant_rows).
        self.dequant_rows = 0

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}, kernel={self.kernel}")

    @torch.no_grad()
    def prepare(self) -> None:
        """Convert the loaded AWQ tensors into the layout of the kernel this device runs."""
        device = self.qweight.device
        if device.type == "cpu" or _cuda_has_tinygemm(device):
            q = unpack_awq(self.qweight).t().contiguous()  # [out, in]
            z = unpack_awq(self.qzeros)  # [groups, out]
            compute_dtype = torch.bfloat16 if device.type == "cuda" else self.scales.dtype
            if compute_dtype == torch.float16 and device.type == "cpu":
                compute_dtype = torch.float32  # fp16 matmuls on CPU are slow and lossy
            s = self.scales.to(torch.float32)
            scales_and_zeros = torch.stack([s, (8 - z).to(torch.float32) * s], dim=-1).to(compute_dtype)
            self.tiles = _inner_k_tiles(self.in_features)
            self.kernel = "tinygemm-cuda" if device.type == "cuda" else "int4pack-cpu"
            packed = _pack_int4(q, self.kernel, self.tiles)
            self.register_buffer("int4_weight", packed, persistent=False)
            self.register_buffer("int4_scales_and_zeros", scales_and_zeros.contiguous(), persistent=False)
            # The AWQ tensors are no longer needed: free them (the point of 4-bit is the memory).
            for name in ("qweight", "qzeros", "scales"):
                self.register_buffer(name, None)
        else:
            self.kernel = "dequantize"
            log.warning("no int4 kernel for %s: AWQ layers will be dequantised on every call (slow)", device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            raise RuntimeError("AwqGemmLinear.prepare() was not called after loading the weights")
        shape = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if self.kernel == "dequantize":
            weight = dequantize_awq(self.qweight, self.qzeros, self.scales, self.group_size).to(x.dtype)
            out = flat @ weight.t()
        elif self.dequant_rows and flat.shape[0] >= self.dequant_rows:
            # One layer's float weight lives only for this product: peak memory grows by one layer at most.
            weight = self.dequantized_weight()
            out = torch.nn.functional.linear(flat.to(weight.dtype), weight).to(x.dtype)
            del weight
        else:
            compute_dtype = self.int4_scales_and_zeros.dtype
            matmul = (torch.ops.aten._weight_int4pack_mm if self.kernel == "tinygemm-cuda"
                      else torch.ops.aten._weight_int4pack_mm_for_cpu)
            out = matmul(flat.to(compute_dtype).contiguous(), self.int4_weight, self.group_size,
                         self.int4_scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape, self.out_features)


    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The float weight [out, in] (the int4 kernel's compute dtype) the packed one encodes:
        ``(q - 8) * scale + zero``, as tinygemm computes it."""
        unpacker = unpacker_for(self.kernel, self.tiles, self.int4_weight.device)
        if unpacker is None:
            raise RuntimeError(f"no unpacker for the {self.kernel} layout")
        scales, zeros = self.int4_scales_and_zeros.unbind(-1)  # [groups, out] each
        weight = unpacker.unpack(self.int4_weight, self.out_features, self.in_features).to(scales.dtype)
        # In place and broadcast over each group's columns: no temporary as large as the weight.
        grouped = weight.sub_(8).view(self.out_features, -1, self.group_size)
        grouped.mul_(scales.t().unsqueeze(-1)).add_(zeros.t().unsqueeze(-1))
        return weight


def default_dequant_rows(device: torch.device) -> int:
    """Where the dequantised weight starts to win, as measured (benchmarks/README.md): on a CPU the int4
    kernel costs about 22 ms per row for a 3584 x 3584 layer, the dequantised product 90 ms for 16 rows and
    125 ms for 256 (4x and 41x faster there); on a GPU, 0 (the int4 kernel) until scripts/gpu_checks.sh
    has measured the crossover."""
    return 16 if device.type == "cpu" else 0


def set_dequant_rows(model: nn.Module, rows: int) -> int:
    """Run AWQ layers on their dequantised weight for inputs of at least ``rows`` rows (0 = never), where the
    layout can be unpacked. Returns how many layers will."""
    able = 0
    for module in model.modules():
        if isinstance(module, AwqGemmLinear) and module.kernel in ("tinygemm-cuda", "int4pack-cpu"):
            unpacker = unpacker_for(module.kernel, module.tiles, module.int4_weight.device) if rows > 0 else None
            fits = unpacker is not None and unpacker.fits(module.out_features, module.in_features)
            module.dequant_rows = rows if fits else 0
            able += fits
    return able


class OmniAwqConfig(QuantizationConfigMixin):
    """transformers quantization config for a pre-quantised AutoAWQ GEMM checkpoint (4 bit, zero point)."""

    def __init__(self, group_size: int = 128, bits: int = 4, **_: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.group_size = group_size
        self.bits = bits

    @staticmethod
    def from_checkpoint(quantization_config: dict[str, Any]) -> dict[str, Any]:
        """Validate the ``quantization_config`` of a published AWQ checkpoint; return this loader's config
        (as the dict ``from_pretrained`` expects to find on the model config)."""
        def get(key: str, default: Any = None) -> Any:
            return quantization_config.get(key, default)

        method = str(get("quant_method", "")).lower()
        if method != "awq":
            raise AwqCheckpointError(f"unsupported quant_method {method!r}: only AWQ checkpoints are supported")
        version = str(get("version", "gemm")).lower()
        if version != "gemm":
            raise AwqCheckpointError(f"unsupported AWQ version {version!r}: only the GEMM layout is supported")
        bits = int(get("bits", get("w_bit", 4)))
        if bits != 4:
            raise AwqCheckpointError(f"unsupported AWQ bit width {bits}: only 4-bit is supported")
        if not get("zero_point", True):
            raise AwqCheckpointError("AWQ without zero points is not supported")
        group_size = int(get("group_size", get("q_group_size", 128)))
        return {"quant_method": QUANT_METHOD, "bits": bits, "group_size": group_size}


class OmniAwqQuantizer(HfQuantizer):
    """Swaps the thinker's decoder Linears for :class:`AwqGemmLinear` before transformers loads the weights."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        decoder_layers = model.get_decoder().layers
        converted = 0
        for layer in decoder_layers:
            for name, module in list(layer.named_modules()):
                if isinstance(module, nn.Linear):
                    layer.set_submodule(name, AwqGemmLinear(module.in_features, module.out_features,
                                                            module.bias is not None,
                                                            self.quantization_config.group_size))
                    converted += 1
        if not converted:
            raise AwqCheckpointError("found no decoder Linear layers to load as AWQ")
        self.converted_modules = converted

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        for module in model.modules():
            if isinstance(module, AwqGemmLinear):
                module.prepare()

    def is_serializable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        # The layers call aten's int4 matmuls, which torch.compile traces like any op: generation may compile
        # the decode step (it only does when asked, with a static cache and a compile config).
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Make ``OmniAwqConfig`` loadable by ``from_pretrained`` (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QUANT_METHOD, OmniAwqConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(QUANT_METHOD, OmniAwqQuantizer)


def check_loading_info(loading_info: dict[str, Any]) -> None:
    """Fail if any 4-bit tensor was not loaded, or if the checkpoint packs modules we keep in float."""
    missing = [k for k in loading_info.get("missing_keys", ()) if k.endswith(PACKED_SUFFIXES)]
    if missing:
        raise AwqCheckpointError(f"the checkpoint lacks AWQ tensors for {len(missing)} decoder weights, "
                                 f"e.g. {sorted(missing)[:3]}")
    stray = [k for k in loading_info.get("unexpected_keys", ()) if k.endswith(PACKED_SUFFIXES)]
    if stray:
        raise AwqCheckpointError(f"the checkpoint quantises modules outside the thinker's decoder layers, "
                                 f"e.g. {sorted(stray)[:3]}; this layout is not supported")
