"""The ops console's server side: sign-in sessions and the read queries its pages need."""
