from bench.defaults import _value
from jojoscl_dist.config import JojoConfig


def test_set_values_parse_scalars_and_lists():
    assert _value("3") == 3 and isinstance(_value("3"), int)
    assert _value("1e-4") == 1e-4
    assert _value("true") is True and _value("cosine") == "cosine"
    assert _value("1024,512") == [1024, 512]


def test_list_value_reaches_a_tuple_config_field():
    cfg = JojoConfig().override({"model.hidden_dims": _value("1024,512")})
    assert cfg.model.hidden_dims == (1024, 512)
