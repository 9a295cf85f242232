from dpo_engine.starter import starter_prompts


def test_starter_set_is_large_varied_and_unique():
    prompts = starter_prompts()
    assert len(prompts) >= 100
    assert len(set(prompts)) == len(prompts)
    assert all(not p.startswith("#") and p == p.strip() for p in prompts)
    # a few from each kind the issue asks for
    assert any("Python" in p for p in prompts)
    assert any(p.startswith("Write") for p in prompts)
    assert any(p.startswith("Explain") for p in prompts)
