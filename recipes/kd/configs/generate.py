"""Write the paper-setting configs of the KD recipe (the YAML files next to this script are its output).

    python recipes/kd/configs/generate.py

Numbers and settings come from shared/spec/recipes.md section 1 (the papers' tables, translated to
this project's names); DKD's per-pair NCKD weight follows mdistiller's configs. Edit the tables
here and regenerate rather than editing 50 YAML files by hand; the digits configs are written by
hand and are not touched.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
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
# mdistiller's DKD NCKD weight (its BETA): 2 for the resnet56/110 pairs, 6 for these, 8 otherwise.
DKD_NCKD_6 = {("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2")}

# teacher (timm), student (timm), student kwargs, ikl (ce, mse), ikl acc, gkl gamma, gkl acc
IMAGENET = [
    ("resnet34.tv_in1k", "resnet18", {}, (1, 0.5), 71.91, 0.6, 71.91),
    ("resnet50.tv_in1k", "mobilenetv1_100", {"act_layer": "relu"}, (4, 1), 72.84, 0.5, 72.92),
]


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


def cifar100() -> None:
    for teacher, student, lr, ikl, ikl_acc, dkd_acc, kd_acc, gkl in CIFAR100:
        nckd = 2.0 if teacher in ("resnet56", "resnet110") else 6.0 if (teacher, student) in DKD_NCKD_6 else 8.0
        common = {
            "dataset": "cifar100",
            "student": student,
            "teacher": teacher,
            "teacher_checkpoint": f"{TEACHER_DIR}/{teacher}_vanilla/ckpt_epoch_240.pth",
            "epochs": 240,
            "batch_size": 64,
            "lr": lr,
            "lr_milestones": [150, 180, 210],
            "weight_decay": 5e-4,
            "temperature": 4.0,
        }
        methods = {
            "kd": (kd_acc, {"label_ce_weight": 0.1, "kd_weight": 0.9, "warmup_epochs": 0}, "KD (Hinton), CE 0.1 / KD 0.9"),
            "dkd": (dkd_acc, {"tckd_weight": 1.0, "nckd_weight": nckd, "warmup_epochs": 20}, f"DKD, NCKD weight {nckd}"),
            "ikl": (
                ikl_acc,
                {"ce_weight": float(ikl[0]), "mse_weight": float(ikl[1]), "use_prior": False,
                 "weight_temperature": 100.0, "warmup_epochs": 20},
                f"IKL (NeurIPS), ce/mse {ikl[0]}/{ikl[1]}, GI off, T2 100",
            ),
            "gkl": (
                None,
                {"ce_weight": float(gkl[0]), "mse_weight": float(gkl[1]), "gamma": gkl[2], "use_prior": gkl[3],
                 "weight_temperature": 4.0, "warmup_epochs": 20},
                f"GKL (TPAMI), ce/mse {gkl[0]}/{gkl[1]}, gamma {gkl[2]}, GI {'on' if gkl[3] else 'off'}, T2 4",
            ),
        }  # fmt: skip
        for method, (paper, specific, what) in methods.items():
            name = f"cifar100_{teacher}_{student}_{method}"
            number = f"{paper:.2f} top-1 (mean of 3 runs)" if paper is not None else "not listed in recipes.md"
            header = [
                f"CIFAR-100 {teacher} -> {student}, {what}.",
                f"Reproduces: {number}.",
                "Needs: `make data DATASET=cifar100`; mdistiller's teacher at teacher_checkpoint",
                f"  (download {TARBALL}; mkdir -p data/teachers && tar xf cifar_teachers.tar -C data/teachers).",
                f'Run: make reproduce-kd CONFIG=recipes/kd/configs/{name}.yaml SEEDS="0 1 2"',
                "Hardware: one GPU, 240 epochs (a few hours on one modern GPU).",
                "Generated by recipes/kd/configs/generate.py from shared/spec/recipes.md section 1.",
            ]
            settings = {"method": method, **common, **specific, "output_dir": f"runs/kd/{name}", "paper_top1": paper}
            write(name, header, settings)


def imagenet() -> None:
    for teacher, student, student_kwargs, ikl, ikl_acc, gamma, gkl_acc in IMAGENET:
        short = f"{teacher.split('.')[0]}_{student}"
        common = {
            "dataset": "imagenet",
            "student": f"timm:{student}",
            "student_kwargs": student_kwargs,
            "teacher": f"timm:{teacher}",
            "teacher_pretrained": True,
            "epochs": 100,
            "batch_size": 512,
            "eval_batch_size": 256,
            "num_workers": 8,
            "mixed_precision": "bf16",
            "lr": 0.2,
            "lr_milestones": [30, 60, 90],
            "weight_decay": 1e-4,
            "temperature": 1.0,
            "ce_weight": float(ikl[0]),
            "mse_weight": float(ikl[1]),
            "use_prior": True,
            "weight_temperature": 1.0,
        }
        runs = {
            "ikl": (ikl_acc, {"warmup_epochs": 1}, f"IKL, ce/mse {ikl[0]}/{ikl[1]}, GI on, T2 1, warm-up 1 epoch"),
            "gkl": (gkl_acc, {"gamma": gamma, "warmup_epochs": 5},
                    f"GKL, gamma {gamma}, ce/mse {ikl[0]}/{ikl[1]} (IKL's; recipes.md lists only gamma), warm-up 5"),
        }  # fmt: skip
        for method, (paper, specific, what) in runs.items():
            name = f"imagenet_{short}_{method}"
            header = [
                f"ImageNet {teacher} -> {student}, {what}.",
                f"Reproduces: {paper:.2f} top-1.",
                "Needs: `make data DATASET=imagenet IMAGENET_DIR=/path/to/imagenet` (train/ and val/ class folders);",
                f"  the teacher's weights from timm ({teacher}; or teacher_pretrained=false teacher_checkpoint=FILE).",
                f"Run: make reproduce-kd CONFIG=recipes/kd/configs/{name}.yaml SEEDS=0",
                "Hardware: the paper used 8 GPUs (global batch 512, 100 epochs); batch_size is global here.",
                "Generated by recipes/kd/configs/generate.py from shared/spec/recipes.md section 1.",
            ]
            settings = {"method": method, **common, **specific, "output_dir": f"runs/kd/{name}", "paper_top1": paper}
            write(name, header, settings)


if __name__ == "__main__":
    cifar100()
    imagenet()
    print(f"wrote {len(list(HERE.glob('*.yaml')))} configs in {HERE}")
