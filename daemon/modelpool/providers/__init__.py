"""One module per upstream API dialect; each turns a Call into an UpstreamResponse."""
