"""Captions: the sidecar files beside the pictures (sidecar), tags as text (tags), the undo journal of bulk edits
(journal), the tags a preset suggests removing (suggestions) and the tag tools over a folder tree (caption_set).
Standard library only: this runs inside the WebUI process."""
