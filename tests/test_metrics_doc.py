from tests.metrics_doc import documented_patterns, undocumented


def test_the_table_parses_and_matches_examples():
    assert len(documented_patterns()) > 60
    assert undocumented(["reward/mean", "reward/embedded/mean", "eval/embedded/addition/pass@4",
                         "cov/entropy_q3", "timing/sync"]) == []


def test_an_undocumented_key_is_caught():
    assert undocumented(["reward/mean", "actor/made_up_metric"]) == ["actor/made_up_metric"]
