"""The one slug rule: model, layer and unit names -> file and URL names (featviz.names.slug)."""
from featviz.microscope.settings import RESERVED
from featviz.microscope.settings import slug as site_slug
from featviz.names import slug

# What sites built before the rule moved to featviz.names have on disk: these must never change.
SITE_FOLDERS = {
    "blocks.8": "blocks.8", "head": "head", "efficientnet_lite0": "efficientnet_lite0",
    "causes-blocks.8-12": "causes-blocks.8-12", "a/b c:d": "a_b_c_d", "ü": "x_",
    "my model (random init, seed 3)": "my_model__random_init__seed_3_",
    "..x..": "x", "": "x_", ".": "x_", "_x": "x_x", "_live": "x_live",
    "static": "xstatic", "Static": "xStatic", "api": "xapi", "classes": "xclasses", "index.html": "xindex.html",
    "manifest.sqlite": "xmanifest.sqlite",
}


def test_site_folder_names_are_unchanged():
    assert {name: site_slug(name) for name in SITE_FOLDERS} == SITE_FOLDERS
    assert {name: slug(name, RESERVED) for name in SITE_FOLDERS} == SITE_FOLDERS


def test_outside_a_site_only_the_site_folders_are_free_names():
    assert slug("static") == "static" and slug("classes") == "classes"
    assert slug("blocks.8_3") == "blocks.8_3" and slug("head_5") == "head_5"  # evolve's filmstrip names
    assert slug("features/3_7") == "features_3_7"  # a '/' never makes a sub-folder
    assert slug("_hidden") == "x_hidden" and slug("..") == "x_"
    for name in ("a b", "x:y", "é", "../etc", "", "con?.png"):
        assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in slug(name))
        assert not slug(name).startswith(".")
