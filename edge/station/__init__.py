"""``linewatch station``: the workstation's end of the learning loop. It receives the samples every device sends
(``receiver``), keeps them in ``DATA/_inbox`` (``inbox``) and serves the page and API that label them (``web``)."""
