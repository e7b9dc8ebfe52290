"""Preview grids: every checkpoint × weight × prompt drawn by the host's txt2img with one seed.

``config`` (what a version's preview draws), ``run`` (drawing the cells), ``tasks`` (a preview running in the
background: visible, stoppable, replaceable), ``cells`` (cell files, the manifest, the per-version lock),
``grid`` (the labelled grids), ``text`` (fonts), ``gallery`` (reading what was drawn).

```
previews/preview.json                 the version's preview config
previews/manifest.json                seed, prompts, settings and every cell drawn (file, infotext, status)
previews/reference/p01.png            prompt 1 without LoRA (drawn once, shown in every row)
previews/<checkpoint>/p01-w0.8.png    prompt 1, that checkpoint at weight 0.8
previews/grid-01.png                  the labelled grid of prompt 1 (+ grid-01-page1.png … when it is tall)
```
"""
