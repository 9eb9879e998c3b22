"""Methods as objects: each recipe's registry, the settings a method reads, your own method by file or module."""

from __future__ import annotations

import textwrap

import pytest
from dkl_recipe_adv.train import AdvConfig
from dkl_recipe_kd.methods import KD_METHODS, KDMethod
from dkl_recipe_kd.train import METHODS, KDConfig, build_method, main
from dkl_recipe_ssl.train import SSLConfig

from dkl_train.config import ConfigError, build_config, config_help, load_config, with_method
from dkl_train.methods import MethodError, Registry

TEACHER = ["dataset=digits", "teacher=resnet8", "teacher_checkpoint=t.pth"]


def test_each_recipe_lists_its_methods_in_the_papers_column_order():
    assert METHODS == KD_METHODS.names() == ("ce", "kd", "dkd", "reviewkd", "ikl", "gkl")
    from dkl_recipe_adv.train import METHODS as ADV
    from dkl_recipe_ssl.train import METHODS as SSL

    assert ADV == ("pgd_at", "trades", "lbgat", "ikl", "gkl") and SSL == ("fixmatch", "meanteacher")


@pytest.mark.parametrize(
    "schema,overrides,reader",
    [
        (KDConfig, [*TEACHER, "method=ikl", "nckd_weight=8"], "method=dkd"),
        (KDConfig, [*TEACHER, "method=ikl", "reviewkd_weight=3"], "method=reviewkd"),
        (KDConfig, ["method=ce", "teacher=resnet8"], "method=kd | dkd | reviewkd | ikl | gkl"),
        (AdvConfig, ["method=trades", "natural_model=resnet18"], "method=lbgat"),
        (AdvConfig, ["method=trades", "mse_weight=3"], "method=ikl | gkl"),
        (SSLConfig, ["method=fixmatch", "consistency=ce", "mse_weight=3"], "consistency=ikl"),
        (SSLConfig, ["method=meanteacher", "consistency=mse", "pseudo_label=hard"], "consistency=ce"),
    ],
)
def test_a_setting_the_chosen_method_does_not_read_is_refused_naming_its_reader(schema, overrides, reader):
    key = overrides[-1].partition("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}' is read by {reader}, not by"):
        load_config(schema, None, overrides)


def test_a_config_file_with_another_methods_setting_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: ikl\ndataset: digits\nteacher: resnet8\nteacher_checkpoint: t.pth\nkd_weight: 0.9\n")
    with pytest.raises(ConfigError, match="'kd_weight' is read by method=kd, not by method=ikl"):
        load_config(KDConfig, path)


def test_the_command_line_refuses_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", "nckd_weight=8"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("config error: 'nckd_weight' is read by method=dkd, not by method=ikl")


def test_typos_point_to_the_nearest_setting_and_method():
    with pytest.raises(ConfigError, match=r"Did you mean 'nckd_weight' \(read by method=dkd\)"):
        load_config(KDConfig, None, [*TEACHER, "method=ikl", "nckd_weigth=8"])
    with pytest.raises(MethodError, match="unknown method 'ikll'. Did you mean 'ikl'"):
        load_config(KDConfig, None, [*TEACHER, "method=ikll"])


def test_help_groups_the_settings_by_the_methods_that_read_them():
    text = config_help(KDConfig)
    dkd = text.index(" read by method=dkd:")
    assert text.index("nckd_weight", dkd) < text.index(" read by method=reviewkd:")
    assert " read by method=ikl | gkl:" in text and "method=ce: no settings of its own" in text
    ssl = config_help(SSLConfig)
    assert "settings of each consistency" in ssl and " read by consistency=ikl:" in ssl


def test_each_method_is_built_from_its_own_settings():
    config = load_config(KDConfig, None, [*TEACHER, "method=dkd", "nckd_weight=2"])
    method = build_method(config)
    assert type(method).__name__ == "DKD" and method.settings.nckd_weight == 2.0
    assert not hasattr(method.settings, "mse_weight")
    ce = with_method(config, "ce")  # the teacher's settings dropped: CE reads none
    assert ce.method == "ce" and not hasattr(ce, "teacher") and ce.student == config.student


OWN = """
    from dataclasses import dataclass

    import torch.nn.functional as F
    from dkl_recipe_kd.methods import KDMethod


    @dataclass
    class SmoothingSettings:
        smoothing: float = 0.1  # label smoothing


    class Smoothed(KDMethod):
        name = "smoothed"
        Settings = SmoothingSettings

        def loss(self, model, batch):
            ce = F.cross_entropy(model(batch["image"]), batch["label"], label_smoothing=self.settings.smoothing)
            return ce, {"ce": ce.detach()}


    class NotAMethod:
        pass
"""


def test_your_own_method_by_file_or_module(tmp_path, monkeypatch):
    (tmp_path / "my_methods.py").write_text(textwrap.dedent(OWN))
    by_file = load_config(KDConfig, None, [f"method={tmp_path}/my_methods.py:Smoothed", "smoothing=0.2"])
    assert build_method(by_file).settings.smoothing == 0.2
    monkeypatch.chdir(tmp_path)  # a module name is looked up from the working directory first
    by_module = load_config(KDConfig, None, ["method=my_methods:Smoothed"])
    assert type(build_method(by_module)).__name__ == "Smoothed"
    with pytest.raises(MethodError, match="it must be a subclass of dkl_recipe_kd.methods.KDMethod"):
        load_config(KDConfig, None, ["method=my_methods:NotAMethod"])
    with pytest.raises(MethodError, match="cannot load missing.py"):
        load_config(KDConfig, None, ["method=missing.py:Smoothed"])
    with pytest.raises(ConfigError, match="'kd_weight' is read by method=kd"):
        load_config(KDConfig, None, ["method=my_methods:Smoothed", "kd_weight=0.5"])


def test_a_registry_takes_only_its_own_kind():
    registry: Registry[KDMethod] = Registry(KDMethod)

    class Nameless(KDMethod):
        pass

    with pytest.raises(TypeError, match="empty or already registered"):
        registry.register(Nameless)
    with pytest.raises(TypeError, match="must subclass KDMethod"):
        registry.register(int)


def test_a_method_checks_the_whole_config():
    with pytest.raises(ConfigError, match="method=lbgat trains without AWP"):
        build_config(AdvConfig, {"method": "lbgat"})
    with pytest.raises(ConfigError, match="attack_loss=ikl uses the class prior, which method=trades"):
        build_config(AdvConfig, {"method": "trades", "attack_loss": "ikl"})
    with pytest.raises(ConfigError, match="method=fixmatch takes consistency=ce or ikl"):
        build_config(SSLConfig, {"method": "fixmatch", "consistency": "mse"})
