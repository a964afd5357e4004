"""The pykka actors of the placement service and the messages they exchange."""
