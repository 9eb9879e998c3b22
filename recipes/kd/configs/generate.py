"""Write the paper-setting configs of the KD recipe (the YAML files next to this script are its output).

    python recipes/kd/configs/generate.py

Each setting is the released configuration translated to this project's names: IKL from
``DKLv1/KD-dkl`` and GKL from ``DKLv2/KD-dkl`` of github.com/jiequancui/DKL, the KD and DKD baselines
from github.com/megvii-research/mdistiller (``configs/cifar100``, ``configs/imagenet``); ReviewKD twice,
``*_reviewkd`` as mdistiller trains it and ``*_reviewkd_original`` as github.com/dvlab-research/ReviewKD
does (where the ReviewKD paper's numbers come from). The paper
numbers are the papers' tables (means of 3 runs on CIFAR-100). Edit the tables here and regenerate
rather than editing the YAML files by hand; the digits configs are written by hand and are not
touched. ``tests/recipes/test_kd_errors.py`` checks that the files and this script agree.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DKL_REPO = "github.com/jiequancui/DKL"
MDISTILLER_REPO = "github.com/megvii-research/mdistiller"
REVIEWKD_REPO = "github.com/dvlab-research/ReviewKD"
TEACHER_DIR = "data/teachers/cifar_teachers"
TARBALL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"

# teacher, student, lr, (ikl ce, ikl mse), ikl acc, dkd acc, kd acc, (gkl ce, gkl mse, gamma, GI)
CIFAR100 = [
    ("resnet56", "resnet20", 0.05, (1, 4), 71.44, 71.97, 70.66, (1, 4, 0.2, True)),
    ("resnet110", "resnet32", 0.05, (1, 12), 74.26, 74.11, 73.08, (1, 4, 0.1, False)),
    ("resnet32x4", "resnet8x4", 0.05, (1, 8), 76.59, 76.32, 73.33, (1, 16, 0.05, True)),
    ("wrn_40_2", "wrn_16_2", 0.05, (3, 12), 76.45, 76.24, 74.92, (3, 20, 0.3, False)),
    ("wrn_40_2", "wrn_40_1", 0.05, (1, 8), 74.98, 74.81, 73.54, (1, 12, 0.3, False)),
    ("vgg13", "vgg8", 0.05, (1, 12), 74.98, 74.68, 72.98, (1, 8, 0.2, True)),
    ("resnet32x4", "ShuffleV1", 0.01, (1, 8), 76.64, 76.45, 74.07, (1, 8, 0.0, True)),
    ("wrn_40_2", "ShuffleV1", 0.01, (1, 4), 77.19, 76.70, 74.83, (1, 8, 0.0, False)),
    ("vgg13", "MobileNetV2", 0.01, (4, 12), 70.40, 69.71, 67.37, (4, 12, 0.1, True)),
    ("ResNet50", "MobileNetV2", 0.01, (1, 12), 70.62, 70.35, 67.35, (1, 8, 0.05, True)),
    ("resnet32x4", "ShuffleV2", 0.01, (3, 12), 77.16, 77.07, 74.45, (3, 12, 0.1, True)),
]
# The file stem the released repositories give each pair (res32x4_res8x4.yaml ...).
RELEASED_STEM = {
    ("resnet56", "resnet20"): "res56_res20", ("resnet110", "resnet32"): "res110_res32",
    ("resnet32x4", "resnet8x4"): "res32x4_res8x4", ("wrn_40_2", "wrn_16_2"): "wrn40_2_wrn_16_2",
    ("wrn_40_2", "wrn_40_1"): "wrn40_2_wrn_40_1", ("vgg13", "vgg8"): "vgg13_vgg8",
    ("resnet32x4", "ShuffleV1"): "res32x4_shuv1", ("wrn_40_2", "ShuffleV1"): "wrn40_2_shuv1",
    ("vgg13", "MobileNetV2"): "vgg13_mv2", ("ResNet50", "MobileNetV2"): "res50_mv2",
    ("resnet32x4", "ShuffleV2"): "res32x4_shuv2",
}  # fmt: skip
# mdistiller's DKD NCKD weight (its BETA): 2 for the resnet56/110 pairs, 6 for these, 8 otherwise.
DKD_NCKD_6 = {("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2")}

# ReviewKD per student (github.com/dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py, build_review_kd): student
# channels per level (shallowest first, the pooled feature last), the teacher's channels, the student's and the
# teacher's sizes (deepest level first, as released); loss weight from its CIFAR-100/script/reviewKD.sh.
REVIEWKD_RESNET = ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], None)
REVIEWKD_CIFAR = {
    ("resnet56", "resnet20"): (REVIEWKD_RESNET, 0.6),
    ("resnet110", "resnet32"): (REVIEWKD_RESNET, 1.0),
    ("resnet32x4", "resnet8x4"): (([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], None), 5.0),
    ("wrn_40_2", "wrn_16_2"): (([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32], None), 5.0),
    ("wrn_40_2", "wrn_40_1"): (([16, 32, 64, 64], [32, 64, 128, 128], [1, 8, 16, 32], None), 5.0),
    ("vgg13", "vgg8"): (([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16], None), None),
    ("resnet32x4", "ShuffleV1"): (([240, 480, 960, 960], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]), 5.0),
    ("wrn_40_2", "ShuffleV1"): (([240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32]), 5.0),
    ("vgg13", "MobileNetV2"):
        (([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16], [1, 4, 4, 8, 16]), None),
    ("ResNet50", "MobileNetV2"):
        (([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [1, 2, 4, 8, 16], [1, 4, 8, 16, 32]), None),
    ("resnet32x4", "ShuffleV2"): (([116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]), 8.0),
}  # fmt: skip
# VGG and MobileNetV2 students: build_review_kd lists their channels and sizes, but their model builders are
# commented out in the released code and reviewKD.sh runs neither, so it gives no loss weight. We use its
# trainer's default --kd-loss-weight (1.0, also mdistiller's REVIEWKD_WEIGHT default), untuned.
REVIEWKD_DEFAULT_WEIGHT = 1.0

# teacher (timm), student (timm), student kwargs, released stems (DKL, mdistiller), ikl (ce, mse), ikl acc,
# gkl gamma, gkl acc, (kd acc, dkd acc), dkd NCKD weight. The students start as mdistiller's ImageNet
# models do: timm's resnet18 without its zero-initialised last BN per block (then it equals
# torchvision's resnet18), timm's MobileNetV1 with ReLU and PyTorch's default initialisation.
IMAGENET = [
    ("resnet34.tv_in1k", "resnet18", {"zero_init_last": False}, ("r34_r18", "r34_r18"), (1, 0.5), 71.91, 0.6,
     71.91, (71.03, 71.70), 0.5),
    ("resnet50.tv_in1k", "mobilenetv1_100", {"act_layer": "relu", "init": "pytorch"}, ("r50_mv", "r50_mv1"), (4, 1),
     72.84, 0.5, 72.92, (70.50, 72.05), 2.0),
]  # fmt: skip
# ReviewKD on ImageNet (DKLv1/KD-dkl/configs/imagenet/<pair>/reviewkd.yaml of the DKL repository, mdistiller's with
# batch 512 / lr 0.2): paper top-1, loss weight, student channels, teacher channels; sizes [1, 7, 14, 28, 56] for both.
REVIEWKD_IMAGENET = {
    "resnet18": (71.61, 1.0, [64, 128, 256, 512, 512], [64, 128, 256, 512, 512]),
    "mobilenetv1_100": (72.56, 8.0, [128, 256, 512, 1024, 1024], [256, 512, 1024, 2048, 2048]),
}
# The original ReviewKD code (REVIEWKD_REPO), where the ReviewKD paper's numbers come from, trains otherwise than
# mdistiller; the *_reviewkd_original.yaml configs follow it (recipes/kd/README.md lists the differences).
# CIFAR-100 (CIFAR-100/train.py, util/misc.py lr_schedule): batch 128, SGD lr 0.1 with Nesterov, lr x0.1 once the
# epochs numbered 150/180/210 (from 0) have ended, i.e. from epoch index 151/181/211; the teacher is never put in eval
# mode; the ramp is min(epoch / 20, 1) on 0-based epochs. Paper top-1 per pair: the ReviewKD paper's CIFAR-100 table.
REVIEWKD_ORIGINAL_CIFAR = {("resnet32x4", "resnet8x4"): 75.63}
REVIEWKD_ORIGINAL_CIFAR_TRAINER = {"batch_size": 128, "lr": 0.1, "nesterov": True, "lr_milestones": [151, 181, 211]}
# ImageNet (ImageNet/imagenet_amp.py, models/reviewkd.py, README.md): 4 GPUs x 64 images with lr 0.1 x 256 / 256, no
# ramp; its ResNets return stage outputs after an in-place ReLU (teacher and ResNet18 student), its MobileNet its
# pointwise BN outputs before the ReLU; ABF width per student (build_review_kd's mid_channel).
REVIEWKD_ORIGINAL_IMAGENET = {"resnet18": (False, 512), "mobilenetv1_100": (True, 256)}  # student pre-ReLU, ABF width
# Images per second of ResNet34 -> ResNet18 IKL on one H200 in bf16 (benchmarks/results/kd_cuda.md).
H200_BF16_IMAGES_PER_S = 3703
IMAGENET_TRAIN_IMAGES = 1_281_167


def _yaml_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def write(name: str, header: list[str], settings: dict[str, object]) -> None:
    lines = [f"# {line}".rstrip() for line in header]
    lines += [f"{key}: {_yaml_value(value)}" for key, value in settings.items()]
    (HERE / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def reviewkd_cifar(teacher: str, student: str) -> tuple[None, dict[str, object], str, str]:
    """ReviewKD's row of a CIFAR-100 pair: the released channels, sizes and weight, mdistiller's trainer settings."""
    (in_channels, out_channels, shapes, out_shapes), weight = REVIEWKD_CIFAR[(teacher, student)]
    settings: dict[str, object] = {
        "reviewkd_weight": weight if weight is not None else REVIEWKD_DEFAULT_WEIGHT,
        "reviewkd_in_channels": in_channels,
        "reviewkd_out_channels": out_channels,
        "reviewkd_shapes": shapes,
        "reviewkd_out_shapes": out_shapes,
        "reviewkd_student_preact": False,
        "warmup_epochs": 20,
    }
    source = (
        f"{REVIEWKD_REPO} CIFAR-100/model/reviewkd.py (build_review_kd: channels and sizes)"
        + (" and script/reviewKD.sh (loss weight)" if weight is not None else "")
        + f",\n  trained as {MDISTILLER_REPO} configs/cifar100/reviewkd.yaml trains ReviewKD (mdistiller's SGD without"
        "\n  Nesterov, the pair's lr as its DKD config, ramp over 20 epochs; the ReviewKD trainer used Nesterov, lr 0.1"
        "\n  (0.02 for ShuffleNet/MobileNet) and a ramp from epoch 0)"
    )
    if weight is None:
        source += (
            f".\nNo released builder: the {student} model of build_review_kd is commented out and reviewKD.sh has no "
            f"{student} run;\n  its channels and sizes are used as listed there, with the trainer's default loss "
            f"weight {REVIEWKD_DEFAULT_WEIGHT} (untuned)"
        )
    what = f"ReviewKD (ABF + HCL), loss weight {settings['reviewkd_weight']}, student post-ReLU features"
    return None, settings, what, source


def reviewkd_original_cifar(teacher: str, student: str) -> tuple[float, dict[str, object], str, str]:
    """ReviewKD's row of a CIFAR-100 pair as the original ReviewKD trainer runs it."""
    _, reviewkd, _, _ = reviewkd_cifar(teacher, student)
    settings: dict[str, object] = {
        "method": "reviewkd",
        **REVIEWKD_ORIGINAL_CIFAR_TRAINER,
        **reviewkd,
        "reviewkd_teacher_train_mode": True,
        "reviewkd_ramp_zero_based": True,
    }
    what = (
        f"ReviewKD (ABF + HCL) as the original ReviewKD code trains it, loss weight {reviewkd['reviewkd_weight']}, "
        "teacher in train mode"
    )
    source = (
        f"{REVIEWKD_REPO} CIFAR-100/train.py, model/reviewkd.py and script/reviewKD.sh: batch 128, SGD lr 0.1 with"
        "\n  Nesterov, lr x0.1 from epoch index 151/181/211 (it decays after the epochs numbered 150/180/210 end), the"
        "\n  teacher never put in eval mode (batch norm on each batch's statistics), ramp min(epoch / 20, 1) on 0-based"
        "\n  epochs (no feature loss in the first). Not as there: its inputs were normalised with CIFAR-10's mean/std (ours"
        "\n  with CIFAR-100's, mdistiller's), its teacher was its own (never released: mdistiller's here), its last"
        "\n  incomplete batch was kept (dropped here)"
    )
    return REVIEWKD_ORIGINAL_CIFAR[(teacher, student)], settings, what, source


def reviewkd_provenance(method: str, dataset: str, pair: str, has_original: bool) -> list[str]:
    """Header lines of a ReviewKD config: which code it follows, where the paper's number comes from."""
    if method == "reviewkd_original":
        table = "CIFAR-100 table" if dataset == "cifar100" else "ImageNet table (also in its ImageNet/README.md)"
        return [
            f"Follows: the original ReviewKD code ({REVIEWKD_REPO}; float64 equality: tests/unit/test_reviewkd_original.py).",
            f"Paper's number: the ReviewKD paper's (Chen et al., CVPR 2021) own {table}, from this code.",
        ]
    original = f"recipes/kd/configs/{dataset}_{pair}_reviewkd_original.yaml"
    other = f"{original} follows it" if has_original else "recipes/kd/README.md lists how"
    where = "its ImageNet table and ImageNet/README.md" if dataset == "imagenet" else "its tables"
    return [
        f"Follows: mdistiller's ReviewKD ({MDISTILLER_REPO} distillers/ReviewKD.py; float64 equality: tests/unit/test_reviewkd.py).",
        f"Paper's number: the ReviewKD paper's own figures ({where}) come from the original ReviewKD code, which trains",
        f"  otherwise ({other}).",
    ]


def cifar100() -> None:
    for teacher, student, lr, ikl, ikl_acc, dkd_acc, kd_acc, gkl in CIFAR100:
        nckd = 2.0 if teacher in ("resnet56", "resnet110") else 6.0 if (teacher, student) in DKD_NCKD_6 else 8.0
        stem = RELEASED_STEM[(teacher, student)]
        common = {
            "dataset": "cifar100",
            "student": student,
            "teacher": teacher,
            "teacher_checkpoint": f"{TEACHER_DIR}/{teacher}_vanilla/ckpt_epoch_240.pth",
            "epochs": 240,
            "batch_size": 64,
            "lr": lr,
            "mixed_precision": "no",
            "lr_milestones": [150, 180, 210],
            "weight_decay": 5e-4,
            "temperature": 4.0,
        }
        kd_source = (
            f"{MDISTILLER_REPO} configs/cifar100/kd.yaml with this pair (and the pair's lr {lr}, as its DKD config)"
        )
        methods = {
            "kd": (kd_acc, {"label_ce_weight": 0.1, "kd_weight": 0.9, "warmup_epochs": 0}, "KD (Hinton), CE 0.1 / KD 0.9",
                   kd_source),
            "dkd": (dkd_acc, {"tckd_weight": 1.0, "nckd_weight": nckd, "warmup_epochs": 20}, f"DKD, NCKD weight {nckd}",
                    f"{MDISTILLER_REPO} configs/cifar100/dkd/{stem}.yaml"),
            "reviewkd": reviewkd_cifar(teacher, student),
            **({"reviewkd_original": reviewkd_original_cifar(teacher, student)}
               if (teacher, student) in REVIEWKD_ORIGINAL_CIFAR else {}),
            "ikl": (
                ikl_acc,
                {"ce_weight": float(ikl[0]), "mse_weight": float(ikl[1]), "use_prior": False,
                 "weight_temperature": 100.0, "warmup_epochs": 20},
                f"IKL (NeurIPS), ce/mse {ikl[0]}/{ikl[1]}, GI off, T2 100",
                f"{DKL_REPO} DKLv1/KD-dkl/cifar100_kd_dkl_configs/{stem}.yaml",
            ),
            "gkl": (
                None,
                {"ce_weight": float(gkl[0]), "mse_weight": float(gkl[1]), "gamma": gkl[2], "use_prior": gkl[3],
                 "weight_temperature": 4.0, "warmup_epochs": 20},
                f"GKL (TPAMI), ce/mse {gkl[0]}/{gkl[1]}, gamma {gkl[2]}, GI {'on' if gkl[3] else 'off'}, T2 4",
                f"{DKL_REPO} DKLv2/KD-dkl/cifar100_config_gkl/{stem}.yaml",
            ),
        }  # fmt: skip
        for method, (paper, specific, what, source) in methods.items():
            name = f"cifar100_{teacher}_{student}_{method}"
            if method == "reviewkd_original":
                number = f"Reproduces: {paper:.2f} top-1 (compared with the best epoch's top-1)."
            elif paper is not None:
                number = f"Reproduces: {paper:.2f} top-1 (mean of 3 runs; compared with the best epoch's top-1, as reported)."
            elif method == "reviewkd":
                number = (
                    "Reproduces: no paper number here (paper_top1: null): the DKL papers' CIFAR-100 tables have no "
                    "ReviewKD column; the ReviewKD paper (Chen et al., CVPR 2021) reports its own (below)."
                )
            else:
                number = (
                    "Reproduces: no paper number here (paper_top1: null). The released repository lists GKL's "
                    "ImageNet results only, and the TPAMI paper's CIFAR-100 table was not available to check."
                )
            header = [
                f"CIFAR-100 {teacher} -> {student}, {what}.",
                number,
                *(
                    reviewkd_provenance(
                        method, "cifar100", f"{teacher}_{student}", (teacher, student) in REVIEWKD_ORIGINAL_CIFAR
                    )
                    if "reviewkd" in method
                    else []
                ),
                *(f"Released setting: {source}.").split("\n"),
                "Precision: fp32, as the released runs; mixed_precision=bf16 is the faster opt-in (not the paper's).",
                "Needs: `make data DATASET=cifar100`; mdistiller's teacher at teacher_checkpoint",
                f"  (download {TARBALL}; mkdir -p data/teachers && tar xf cifar_teachers.tar -C data/teachers).",
                f'Run: make reproduce-kd CONFIG=recipes/kd/configs/{name}.yaml SEEDS="0 1 2"',
                "Hardware: one GPU, 240 epochs (a few hours on one modern GPU).",
                "Generated by recipes/kd/configs/generate.py (edit the table there and rerun it).",
            ]
            settings = {"method": method, **common, **specific, "output_dir": f"runs/kd/{name}", "paper_top1": paper}
            if settings["method"] == "reviewkd":
                del settings["temperature"]  # ReviewKD compares features: no logit temperature
            write(name, header, settings)


def reviewkd_imagenet(student: str, stem: str) -> tuple[float, dict[str, object], str, str]:
    """ReviewKD's row of an ImageNet pair, as the DKL repository's mdistiller fork configures it."""
    paper, weight, in_channels, out_channels = REVIEWKD_IMAGENET[student]
    settings: dict[str, object] = {
        "label_ce_weight": 1.0,
        "reviewkd_weight": weight,
        "reviewkd_in_channels": in_channels,
        "reviewkd_out_channels": out_channels,
        "reviewkd_shapes": [1, 7, 14, 28, 56],
        "reviewkd_out_shapes": [1, 7, 14, 28, 56],
        "reviewkd_student_preact": True,
        "warmup_epochs": 1,
    }
    what = f"ReviewKD (ABF + HCL), loss weight {weight}, student pre-ReLU features, warm-up 1 epoch"
    source = f"{DKL_REPO} DKLv1/KD-dkl/configs/imagenet/{stem}/reviewkd.yaml (mdistiller's, at batch 512 / lr 0.2)"
    if student == "mobilenetv1_100":
        source += (
            ";\n  its MAX_MID_CHANNEL: 256 is never read by mdistiller's ReviewKD, whose ABFs are min(512, 1024) = 512 "
            "channels wide: so are ours"
        )
    return paper, settings, what, source


def reviewkd_original_imagenet(student: str) -> tuple[float, dict[str, object], str, str]:
    """ReviewKD's row of an ImageNet pair as the original ReviewKD code trains it."""
    paper, mdistiller, _, _ = reviewkd_imagenet(student, "")
    student_preact, mid_channels = REVIEWKD_ORIGINAL_IMAGENET[student]
    settings: dict[str, object] = {
        "method": "reviewkd",
        "batch_size": 256,
        "lr": 0.1,
        **mdistiller,
        "reviewkd_student_preact": student_preact,
        "reviewkd_teacher_preact": False,
        "reviewkd_mid_channels": mid_channels,
        "warmup_epochs": 0,
    }
    taps = "pre-ReLU" if student_preact else "post-ReLU"
    what = (
        f"ReviewKD (ABF + HCL) as the original ReviewKD code trains it, loss weight {mdistiller['reviewkd_weight']}, "
        f"ABF width {mid_channels}, teacher post-ReLU and student {taps} features, no warm-up"
    )
    source = (
        f"{REVIEWKD_REPO} ImageNet/imagenet_amp.py, models/reviewkd.py and README.md: 4 GPUs x 64 images (global 256),"
        "\n  lr 0.1 x 256 / 256, no ramp of the feature loss; the teacher's ResNet returns its stage outputs after an in-place"
        f"\n  ReLU, the student's are {taps}; ABFs {mid_channels} channels wide. Not as there: batch norm statistics over"
        "\n  each process's share (64 images there)"
    )
    return paper, settings, what, source


def imagenet() -> None:
    hours = IMAGENET_TRAIN_IMAGES * 100 / H200_BF16_IMAGES_PER_S / 3600
    for teacher, student, kwargs, stems, ikl, ikl_acc, gamma, gkl_acc, baselines, nckd in IMAGENET:
        short = f"{teacher.split('.')[0]}_{student}"
        common = {
            "dataset": "imagenet",
            "student": f"timm:{student}",
            "student_kwargs": kwargs,
            "teacher": f"timm:{teacher}",
            "teacher_pretrained": True,
            "epochs": 100,
            "batch_size": 512,
            "eval_batch_size": 256,
            "mixed_precision": "no",
            "channels_last": True,
            "cudnn_benchmark": True,
            "lr": 0.2,
            "lr_milestones": [30, 60, 90],
            "weight_decay": 1e-4,
            "temperature": 1.0,
        }
        dkl = {"ce_weight": float(ikl[0]), "mse_weight": float(ikl[1]), "use_prior": True, "weight_temperature": 1.0}
        runs = {
            "ikl": (ikl_acc, {**dkl, "warmup_epochs": 1}, f"IKL, ce/mse {ikl[0]}/{ikl[1]}, GI on, T2 1, warm-up 1 epoch",
                    f"{DKL_REPO} DKLv1/KD-dkl/imagenet_kd_dkl_configs/{stems[0]}_ikl_kd.yaml"),
            "gkl": (gkl_acc, {**dkl, "gamma": gamma, "warmup_epochs": 5},
                    f"GKL, ce/mse {ikl[0]}/{ikl[1]}, gamma {gamma}, GI on, T2 1, warm-up 5 epochs",
                    f"{DKL_REPO} DKLv2/KD-dkl/imagenet_config_gkl/{stems[0]}_gkl_kd.yaml"),
            "kd": (baselines[0], {"label_ce_weight": 0.5, "kd_weight": 0.5, "warmup_epochs": 0},
                   "KD (Hinton), CE 0.5 / KD 0.5, T 1", f"{MDISTILLER_REPO} configs/imagenet/{stems[1]}/kd.yaml"),
            "dkd": (baselines[1], {"tckd_weight": 1.0, "nckd_weight": nckd, "warmup_epochs": 1},
                    f"DKD, TCKD 1 / NCKD {nckd}, T 1, warm-up 1 epoch", f"{MDISTILLER_REPO} configs/imagenet/{stems[1]}/dkd.yaml"),
            "reviewkd": reviewkd_imagenet(student, stems[1]),
            "reviewkd_original": reviewkd_original_imagenet(student),
        }  # fmt: skip
        for method, (paper, specific, what, source) in runs.items():
            name = f"imagenet_{short}_{method}"
            original = method == "reviewkd_original"
            gpus = (
                "the original code ran on 4 GPUs (global batch 256"
                if original
                else "the paper used 8 GPUs (global batch 512"
            )
            header = [
                f"ImageNet {teacher} -> {student}, {what}.",
                f"Reproduces: {paper:.2f} top-1 (compared with the best epoch's top-1, as reported).",
                *(reviewkd_provenance(method, "imagenet", short, True) if "reviewkd" in method else []),
                *(f"Released setting: {source}.").split("\n"),
                "Precision: fp32, as the released runs; mixed_precision=bf16 is the faster opt-in (not the paper's).",
                f"Student start: {student} initialised as mdistiller's ImageNet student (student_kwargs; see the README).",
                "Needs: `make data DATASET=imagenet IMAGENET_DIR=/path/to/imagenet` (indexes train/<wnid>/ and val/ in place: val/ as class folders, or flat with LOC_val_solution.csv or the devkit);",
                f"  the teacher's weights from timm ({teacher}; or teacher_pretrained=false teacher_checkpoint=FILE).",
                f"Run: make reproduce-kd CONFIG=recipes/kd/configs/{name}.yaml SEEDS=0",
                f"Hardware: {gpus}, 100 epochs); batch_size is global here. One H200",
                f"  trained ResNet34 -> ResNet18 IKL at {H200_BF16_IMAGES_PER_S} images/s in bf16 on synthetic data, about",
                f"  {hours:.0f} GPU-hours for 100 epochs if data loading keeps up; fp32 is slower (not measured).",
                "Generated by recipes/kd/configs/generate.py (edit the table there and rerun it).",
            ]
            settings = {"method": method, **common, **specific, "output_dir": f"runs/kd/{name}", "paper_top1": paper}
            if settings["method"] == "reviewkd":
                del settings["temperature"]  # ReviewKD compares features: no logit temperature
            write(name, header, settings)


if __name__ == "__main__":
    cifar100()
    imagenet()
    print(f"wrote {len(list(HERE.glob('*.yaml')))} configs in {HERE}")
