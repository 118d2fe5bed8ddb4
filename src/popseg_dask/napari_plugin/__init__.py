"""popseg's napari plugin (npe2): a reader for popseg outputs and four docked widgets.

* :mod:`.reader` — a popseg output opens as the movie's channels and every population's labels,
  lazily, with corrected label images beside the originals.
* :mod:`.tuner` — edit a population's settings; the preview is :class:`popseg_dask.preview.Preview`,
  i.e. what a run writes on that frame.
* :mod:`.runner` — run a config on the embedded cluster or a scheduler, without freezing the viewer.
* :mod:`.proofread` — edit frames with napari's label tools and helpers; save corrections with
  :func:`popseg_dask.corrections.save_corrections`.
* :mod:`.trainer` — export corrected frames as a training set and train a model in a subprocess.

Everything that is not drawing lives outside this package, tested without a display.
"""
