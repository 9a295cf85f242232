import pytest
import torch

from dpo_engine.devices import pick_device
from dpo_engine.errors import DeviceError, ModelError, ModelNotFoundError
from dpo_engine.models import default_model_dir, is_converted, load_model, resolve_model_ref


def test_local_folder_loads_on_cpu_in_fp32(tiny_loaded):
    assert tiny_loaded.resolved.kind == "folder"
    assert tiny_loaded.device.device == "cpu"
    assert next(tiny_loaded.model.parameters()).dtype == torch.float32
    assert not tiny_loaded.model.training


def test_tokenizer_chat_template_round_trips(tiny_loaded):
    tok = tiny_loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "héllo <b>"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    assert "héllo <b>" in text


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="No model at"):
        resolve_model_ref(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(ModelNotFoundError, match="No .gguf file"):
        resolve_model_ref(str(tmp_path / "x.gguf"))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_ref(str(tmp_path))


def test_pickled_weights_are_refused(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors"):
        resolve_model_ref(str(tmp_path))


def test_unreachable_hub_id_gives_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="hub"):
        load_model("nobody-here/not-a-model-xyz", pick_device("cpu"))


def test_device_choice_on_this_machine():
    choice = pick_device("auto")
    if torch.cuda.is_available():
        assert choice.device == "cuda"
    else:
        assert choice.device in ("cpu", "mps")
        assert choice.dtype == "float32"
    assert pick_device("cpu").describe() == "cpu, float32"


def test_device_errors_say_what_to_do():
    with pytest.raises(DeviceError, match="Unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            pick_device("cuda")


def test_device_env_override(monkeypatch):
    monkeypatch.setenv("DPO_STUDIO_DEVICE", "cpu")
    assert pick_device().reason == "requested"


@pytest.mark.integration
def test_default_model_is_prepared_as_safetensors():
    """`make test` prepares the default model before pytest runs."""
    folder = default_model_dir()
    assert is_converted(folder), "run `dpo-engine prepare-model` (make test does)"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))


def test_warm_imports_brings_in_the_models_own_architecture(tiny_model_dir, tmp_path):
    import sys

    from dpo_engine.models import warm_imports

    import transformers.conversion_mapping as conversion

    conversion._checkpoint_conversion_mapping_cache = None  # as in a process that has loaded nothing yet
    names = warm_imports(str(tiny_model_dir))
    assert names[-2:] == ["LlamaForCausalLM", "conversion_mapping"]  # the tiny model's config says llama
    assert "transformers.models.llama.modeling_llama" in sys.modules
    assert conversion._checkpoint_conversion_mapping_cache is not None  # built here, not in the first load
    # no config to read (a hub id, a .gguf file, nothing yet): the generic pieces only, no error
    assert warm_imports(str(tmp_path / "nothing-here")) == names[:-2]
    assert warm_imports("HuggingFaceTB/SmolLM2-135M-Instruct") == names[:-2]
