from bench.defaults import parse_value
from jojoscl_dist.config import JojoConfig


def test_set_values_parse_scalars_and_lists():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-4") == 1e-4
    assert parse_value("true") is True and parse_value("cosine") == "cosine"
    assert parse_value("1024,512") == [1024, 512]


def test_list_value_reaches_a_tuple_config_field():
    cfg = JojoConfig().override({"model.hidden_dims": parse_value("1024,512")})
    assert cfg.model.hidden_dims == (1024, 512)
