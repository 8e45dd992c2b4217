"""Sign-in methods and the signature checks they share."""
