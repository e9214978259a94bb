"""The running application: process runtime, Dramatiq actors, scheduler, command line."""
