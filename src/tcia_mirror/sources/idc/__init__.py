"""Series served from NCI Imaging Data Commons (IDC) public buckets, named by ``.s5cmd`` manifests."""
