import matplotlib

matplotlib.use("Agg")


def test_loss_curves_draw_a_panel_per_log_or_a_line_per_named_log_in_one_panel():
    """A flat log is one panel (raw and moving average); a dict of logs (one per λ) shares one
    panel, one colour and legend entry each; the y axis is logarithmic only if every value in the
    panel is positive."""
    from icm_lib import plots

    flat = plots.loss_curves({"loss": [4.0, 3.0, 2.0, 1.5]}, smooth=2)
    (ax,) = flat.axes
    assert len(ax.lines) == 2 and ax.get_legend() is None and ax.get_yscale() == "log"
    grouped = plots.loss_curves(
        {
            "bpp": {"λ=1": [2.0, 1.0, 0.5], "λ=2": [2.0, 1.5, 1.2]},
            "task": {"λ=1": [0.5, -0.1, 0.2], "λ=2": [0.4, 0.3]},
        },
        smooth=3,
    )
    bpp, task = grouped.axes
    assert [t.get_text() for t in bpp.get_legend().get_texts()] == ["λ=1", "λ=2"]
    assert len(bpp.lines) == 4 and bpp.get_yscale() == "log"
    colors = {line.get_color() for line in bpp.lines}
    assert colors == {"C0", "C1"}
    # λ=2's task log is shorter than the window: its raw line carries the label
    assert [t.get_text() for t in task.get_legend().get_texts()] == ["λ=1", "λ=2"]
    assert len(task.lines) == 3 and task.get_yscale() == "linear"  # a negative value
