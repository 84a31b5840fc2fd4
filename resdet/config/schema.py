"""The config schema: one dataclass per YAML section.

Every key a YAML file or a ``KEY VALUE`` override may set is a field here, with its type and
default. ``resdet.config.load`` checks files against this schema, so an unknown or mistyped
key is an error naming the file, the key and the closest valid key -- never silently ignored.

Units: sizes in pixels, learning rates per iteration of ``SOLVER.IMS_PER_BATCH`` images,
periods in iterations. Pixel statistics are in 0-255 units of ``MODEL.INPUT_FORMAT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class BackboneConfig:
    NAME: str = "resnet"  # "resnet" (C4 / classification) or "resnet_fpn"
    DEPTH: int = 50  # ImageNet 18/34/50/101/152, or CIFAR 6n+2 when STEM == "cifar"
    STEM: str = "imagenet"  # "imagenet" (7x7/2 conv + 3x3/2 max pool) or "cifar" (3x3 conv)
    PLAIN: bool = False  # the paper's "plain" nets: same layers, no shortcuts
    SHORTCUT: str = "B"  # "A" zero-padded identity, "B" projection on change, "C" all projection
    STRIDE_IN_1X1: bool = False  # MSRA/Caffe weights put the stride in the bottleneck 1x1
    NORM: str = "BN"  # "BN", "FrozenBN", "SyncBN"
    FREEZE_AT: int = 0  # 0 nothing frozen, 1 stem, 2 stem+res2, ... 5 everything
    OUT_FEATURES: List[str] = field(default_factory=lambda: ["res4"])
    ZERO_INIT_RESIDUAL: bool = False  # zero gamma of each block's last BN (Goyal et al. 2017)
    WIDTH: int = 64  # channels of the stem and of res2's 3x3 (16 for CIFAR)
    PRETRAINED: str = ""  # classification checkpoint to initialise the backbone from


@dataclass
class FPNConfig:
    OUT_CHANNELS: int = 256


@dataclass
class AnchorConfig:
    # One list per feature level; C4 has one level (stride 16) with the paper's 3 scales.
    SIZES: List[List[float]] = field(default_factory=lambda: [[128.0, 256.0, 512.0]])
    ASPECT_RATIOS: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # torchvision's AnchorGenerator rounds each cell anchor's corners to whole pixels.
    ROUND: bool = False
    # torchvision's: each level's stride is (padded input size) // (feature size), per axis,
    # not the backbone's nominal stride (p6 of a 352-px-high input: 352 // 6 = 58, not 64).
    STRIDE_FROM_INPUT: bool = False


@dataclass
class RPNConfig:
    IN_FEATURES: List[str] = field(default_factory=lambda: ["res4"])
    BATCH_SIZE_PER_IMAGE: int = 256
    POSITIVE_FRACTION: float = 0.5
    FG_IOU_THRESHOLD: float = 0.7
    BG_IOU_THRESHOLD: float = 0.3
    PRE_NMS_TOPK_TRAIN: int = 12000
    POST_NMS_TOPK_TRAIN: int = 2000
    PRE_NMS_TOPK_TEST: int = 6000
    POST_NMS_TOPK_TEST: int = 1000
    NMS_THRESH: float = 0.7
    MIN_SIZE: float = 0.0
    BBOX_REG_WEIGHTS: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    LOSS_TYPE: str = "smooth_l1"  # or "l1"
    SMOOTH_L1_BETA: float = 0.0  # 0 makes smooth L1 plain L1 (the modern default)
    LOSS_WEIGHT: float = 1.0
    # Rank proposals for NMS by sigmoid(objectness), as torchvision does, instead of the logit
    # (same order, except that fp32 sigmoid ties logits above ~17 at 1.0).
    SIGMOID_SCORES: bool = False


@dataclass
class ROIHeadsConfig:
    NAME: str = "c4"  # "c4": res5 as the per-region head (the paper); "fpn": 2fc head
    NUM_CLASSES: int = 80
    IN_FEATURES: List[str] = field(default_factory=lambda: ["res4"])
    POOLER_TYPE: str = "ROIAlign"  # or "ROIPool" (the paper's original)
    POOLER_RESOLUTION: int = 14  # C4: 14 (res5 halves it to 7); FPN: 7
    POOLER_SAMPLING_RATIO: int = 0  # 0 = adaptive, as torchvision.ops.roi_align
    # RoIAlign's half-pixel offset (detectron2's ROIAlignV2). None = the head's own default:
    # True for C4, False for FPN (torchvision's MultiScaleRoIAlign).
    POOLER_ALIGNED: Optional[bool] = None
    # FPN: a box of this side (sqrt(area), input pixels) is pooled from p4, each halving of it
    # one level lower, within the head's levels (the FPN paper's 224: ImageNet's crop size).
    POOLER_CANONICAL_SIZE: int = 224
    BATCH_SIZE_PER_IMAGE: int = 512
    POSITIVE_FRACTION: float = 0.25
    IOU_THRESHOLD: float = 0.5
    BBOX_REG_WEIGHTS: List[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    FC_DIM: int = 1024  # FPN box head
    LOSS_TYPE: str = "smooth_l1"
    SMOOTH_L1_BETA: float = 0.0
    SCORE_THRESH_TEST: float = 0.05
    NMS_THRESH_TEST: float = 0.5
    DETECTIONS_PER_IMAGE: int = 100
    # Detections narrower or lower than this (pixels) are dropped; 0 drops only empty boxes.
    # torchvision's detectors use 0.01.
    MIN_BOX_SIZE_TEST: float = 0.0
    FP32_BOX_PREDICTOR: bool = True  # keep the final cls/box layer in fp32 under autocast


@dataclass
class ModelConfig:
    ARCH: str = "faster_rcnn"  # "faster_rcnn" or "classifier"
    NUM_CLASSES: int = 1000  # classifier only; detection uses ROI_HEADS.NUM_CLASSES
    WEIGHTS: str = ""  # full model checkpoint (resdet or converted) loaded before training
    DEVICE: str = "auto"  # "auto" picks cuda when available, else cpu
    INPUT_FORMAT: str = "RGB"  # "BGR" for MSRA/Caffe2 weights
    PIXEL_MEAN: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    PIXEL_STD: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # Pixels are divided by this before PIXEL_MEAN / PIXEL_STD apply: 1 for statistics in
    # 0-255 units; torchvision's detectors read 0-1 images (255, with mean/std in 0-1 units).
    PIXEL_SCALE: float = 1.0
    # NHWC weights and activations everywhere (CUDA included). CPU detection training goes NHWC
    # anyway where that is measured fastest (SOLVER.CPU_CHANNELS_LAST, ACCEL.DECIDE).
    CHANNELS_LAST: bool = False
    BACKBONE: BackboneConfig = field(default_factory=BackboneConfig)
    FPN: FPNConfig = field(default_factory=FPNConfig)
    ANCHOR: AnchorConfig = field(default_factory=AnchorConfig)
    RPN: RPNConfig = field(default_factory=RPNConfig)
    ROI_HEADS: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)


@dataclass
class InputConfig:
    # Detection
    MIN_SIZE_TRAIN: List[int] = field(default_factory=lambda: [800])
    MAX_SIZE_TRAIN: int = 1333
    MIN_SIZE_TEST: int = 800
    MAX_SIZE_TEST: int = 1333
    FLIP_PROB: float = 0.5
    SIZE_DIVISIBILITY: int = 32  # padding multiple (FPN needs 32; C4 needs 16)
    # Classification
    CROP_SIZE: int = 224
    SCALE_RANGE: List[int] = field(default_factory=lambda: [256, 480])
    TEST_RESIZE: int = 256
    PCA_STD: float = 0.1  # AlexNet-style PCA colour augmentation; 0 disables
    AUGMENT: str = "imagenet"  # "imagenet", "cifar" or "generic"
    # Images whose header declares more pixels are refused before decoding (decompression
    # bombs; resdet.data.image_io). Pillow's error limit; 0 disables the check.
    MAX_IMAGE_PIXELS: int = 178_956_970


@dataclass
class DatasetsConfig:
    TRAIN: List[str] = field(default_factory=list)
    TEST: List[str] = field(default_factory=list)
    # Classification: a dataset name ("imagenet", "cifar10") or an ImageFolder root.
    CLS_TRAIN: str = ""
    CLS_TEST: str = ""
    CIFAR_VAL_SIZE: int = 0  # 5000 gives the paper's 45k/5k train/val split
    ON_ERROR: str = "raise"  # "raise" at the first bad record, or "skip" (counted and logged)
    FILTER_EMPTY: bool = True  # drop training images without (non-crowd) objects


@dataclass
class DataloaderConfig:
    NUM_WORKERS: int = 2
    ASPECT_RATIO_GROUPING: bool = True
    # Decoded training images kept in memory, MB per data-loader process (each worker has its
    # own); 0: off. For a small dataset whose decoding costs as much as its step (see README).
    CACHE_MB: int = 0


@dataclass
class AMPConfig:
    ENABLED: bool = False
    DTYPE: str = "bfloat16"  # "bfloat16" (CPU and CUDA) or "float16" (CUDA, with a GradScaler)


@dataclass
class SolverConfig:
    OPTIMIZER: str = "SGD"  # "SGD" or "AdamW"
    BASE_LR: float = 0.02
    MOMENTUM: float = 0.9
    NESTEROV: bool = False
    WEIGHT_DECAY: float = 1e-4
    WEIGHT_DECAY_NORM: float = 0.0  # norm layers and biases get no decay by default
    WEIGHT_DECAY_BIAS: float = 0.0
    IMS_PER_BATCH: int = 16  # global batch (split across ranks)
    MAX_ITER: int = 90000
    LR_SCHEDULER: str = "multistep"  # "multistep", "cosine", "linear" (to 0) or "plateau"
    STEPS: List[int] = field(default_factory=lambda: [60000, 80000])
    GAMMA: float = 0.1
    WARMUP_ITERS: int = 1000
    WARMUP_FACTOR: float = 0.001
    # The paper's ResNet-110 CIFAR trick: LR x WARMUP_UNTIL_ERR_FACTOR until train error < X.
    WARMUP_UNTIL_TRAIN_ERR: float = 0.0
    WARMUP_UNTIL_ERR_FACTOR: float = 0.1
    PLATEAU_PATIENCE: int = 3  # evaluations without improvement before lr /= 10 (plateau)
    PLATEAU_METRIC: str = "top1_err"  # eval result key the plateau rule watches (e.g. "bbox/AP")
    PLATEAU_MODE: str = "min"  # "min" for errors, "max" for AP; lr *= GAMMA on a plateau
    CLIP_GRADIENTS: float = 0.0  # max total grad norm; 0 disables
    CHECKPOINT_PERIOD: int = 5000
    MAX_TO_KEEP: int = 3
    # Keep model_best.pth by this evaluation result (e.g. "coco/AP50", "voc/mAP07", "loss"
    # with TEST.VAL_LOSS, "top1_err"); "" = off. BEST_MODE "max" (AP) or "min" (errors, loss).
    BEST_METRIC: str = ""
    BEST_MODE: str = "max"
    # Stop after this many evaluations in a row without a better BEST_METRIC; 0 = off.
    EARLY_STOP_PATIENCE: int = 0
    # Detection training: apply each frozen BN's affine map to its convolution's weights on
    # the fly (resdet.layers.fold.fold_frozen_bn_training_): same parameters, checkpoint keys,
    # outputs and gradients, two fewer passes over every frozen-BN activation.
    FOLD_FROZEN_BN: bool = True
    # CPU detection training, where measured fastest (ACCEL.DECIDE; for R50-FPN: AVX2-only
    # CPUs): the NCHW kernels outside oneDNN. 3x3 stride-1 convolutions (32+ channels)
    # compute forward, input and weight gradients as Winograd convolutions
    # (resdet.layers.winograd), 1x1 stride-1 ones on maps of 2048+ pixels as GEMMs
    # (resdet.layers.gemm): same parameters and keys, gradients within ~1e-5 relative;
    # R50-FPN steps ~1.4-1.5x torchvision's speed there (BENCHMARKS.md). Other devices,
    # autocast and small maps run the ordinary convolution either way. False: never.
    WINOGRAD: bool = True
    # CPU detection training, where measured fastest (for R50-FPN: AVX-512 CPUs): the model
    # trains channels_last (oneDNN's NHWC kernels; R50-FPN step 1.42x torchvision against
    # 1.12x NCHW and 1.26x with Winograd on the AMX Xeon). False: never.
    CPU_CHANNELS_LAST: bool = True
    AMP: AMPConfig = field(default_factory=AMPConfig)


@dataclass
class TestAugConfig:
    # Detection: test-time augmentation (resdet.evaluation.tta). Each image is also seen at
    # the other MIN_SIZES (INPUT.MIN_SIZE_TEST is always the first view) and, with FLIP,
    # mirrored (with DIHEDRAL, rotated too); the views' detections are fused: a detection's
    # score is its mean over the views (0 where a view has no same-class box with IoU >=
    # FUSE_IOU), its box the score-weighted mean of the matched boxes. The final evaluation
    # then reports both the plain (first view) and the fused metrics ("coco/AP" and
    # "coco_tta/AP"); the Predictor answers with the fused detections. One forward pass per
    # view.
    ENABLED: bool = False
    MIN_SIZES: List[int] = field(default_factory=list)
    MAX_SIZE: int = 0  # cap of the sizes other than INPUT.MIN_SIZE_TEST; 0: INPUT.MAX_SIZE_TEST
    FLIP: bool = True
    # All eight symmetries of the square as views (90-degree rotations and their mirrors;
    # FLIP implied): for data without a natural up, such as aerial or microscope images.
    DIHEDRAL: bool = False
    FUSE_IOU: float = 0.55


@dataclass
class TestConfig:
    EVAL_PERIOD: int = 0  # 0: evaluate only at the end
    TEN_CROP: bool = False  # classification: also report 10-crop error
    # Detection: evaluators to run ("coco", "voc"); empty = the test dataset's own.
    EVALUATORS: List[str] = field(default_factory=list)
    IMS_PER_BATCH: int = 1
    # Detection training: also compute the four training losses on the test set at each
    # evaluation (eval-mode BN, seeded sampling), logged as val/loss_*.
    VAL_LOSS: bool = False
    # Detection evaluation and inference on a copy of the model with BN folded into the
    # convolutions and, on CPU, conv + bias + ReLU (+ residual) fused in one oneDNN call
    # (resdet.accel.inference_model). Same detections within float rounding.
    FAST_INFERENCE: bool = True
    # With FAST_INFERENCE on CPU, where faster than oneDNN (ACCEL.DECIDE: measured on the
    # model; R50-FPN at 800x1333 on AVX2-only CPUs, not on AVX-512 ones): the FPN and the RPN
    # head run NCHW with their 3x3 stride-1 convolutions as NNPACK Winograd convolutions and
    # their 1x1 ones as GEMMs (resdet.layers.fuse; outputs within ~1e-5 relative); the
    # residual blocks stay oneDNN NHWC. False: never.
    WINOGRAD: bool = True
    # Detection: write the evaluation report (resdet.evaluation.report_writer: PR and F1
    # curves, confusion matrix, TIDE errors, galleries) after the final evaluation, from
    # the COCO evaluator's coco_results.json, into REPORT_DIR (default OUTPUT_DIR/report).
    REPORT: bool = False
    REPORT_DIR: str = ""
    # Score threshold of the report's confusion matrix and galleries; < 0: the threshold
    # that maximises F1 over all classes.
    REPORT_SCORE_THRESH: float = -1.0
    AUG: TestAugConfig = field(default_factory=TestAugConfig)


@dataclass
class AccelConfig:
    # How resdet picks the CPU fast paths the config allows (SOLVER.WINOGRAD,
    # SOLVER.CPU_CHANNELS_LAST, TEST.WINOGRAD; bf16 in the demo's schedule): "measure" times
    # them on the model at the config's image size once per machine, torch version, thread
    # count and model (seconds for a small model, ~2 min for R50-FPN at 800 px on 2 cores;
    # cached in ~/.cache/resdet/fastpaths.json); "isa" follows a fixed rule by CPU
    # capability, untimed; "config" uses what the config allows, untimed. resdet.accel.
    DECIDE: str = "measure"
    # Intra-op threads of the process (training, evaluation, inference); 0 = torch's default
    # (one per core). Lower it when other processes share the cores.
    THREADS: int = 0


@dataclass
class Config:
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    INPUT: InputConfig = field(default_factory=InputConfig)
    DATASETS: DatasetsConfig = field(default_factory=DatasetsConfig)
    DATALOADER: DataloaderConfig = field(default_factory=DataloaderConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    ACCEL: AccelConfig = field(default_factory=AccelConfig)
    OUTPUT_DIR: str = "output/run"
    SEED: int = 0
    DETERMINISTIC: bool = False
    LOG_PERIOD: int = 20
