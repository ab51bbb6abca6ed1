"""utils/lists.split_list: comma lists whose items may be sweep run directories (``KEY=V,seed=S``)."""

from attnguard.utils.lists import split_list


def test_plain_lists_split_on_every_comma(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert split_list("fgsm, pgd-20,,cw-20 ") == ["fgsm", "pgd-20", "cw-20"]
    assert split_list("10,20,50") == ["10", "20", "50"]
    assert split_list("") == []


def test_a_path_with_commas_stays_one_item(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sw" / "defense.preset=madry,seed=1").mkdir(parents=True)
    (tmp_path / "sw" / "defense.preset=at+alp,seed=1").mkdir(parents=True)
    (tmp_path / "bb").mkdir()
    a, b = "sw/defense.preset=madry,seed=1", "sw/defense.preset=at+alp,seed=1"
    assert split_list(f"{a},{b},bb") == [a, b, "bb"]
    # a transfer source, with and without its attack, inside an attack list
    assert split_list(f"fgsm,transfer:{a}:pgd-20,transfer:{b},pgd-20") == [
        "fgsm", f"transfer:{a}:pgd-20", f"transfer:{b}", "pgd-20"]
    # pieces that name no path together stay apart (the error about the missing run comes later, once)
    assert split_list("sw/defense.preset=trades,seed=1,bb") == ["sw/defense.preset=trades", "seed=1", "bb"]
    # a piece that is a path by itself is not merged with what follows
    (tmp_path / "x").mkdir()
    (tmp_path / "x,y").mkdir()
    assert split_list("x,y") == ["x", "y"]
